"""The page-permission model against hand-worked SDM examples, its named QEMU quirks and choices, and
the pruning of the matrix: no two cases the model tells apart share a representative (no VM)."""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import replace

import pytest

from harness.errors import ProtocolError
from harness.matrix.cases import (
    canonical,
    canonical_controls,
    controls_space,
    pruned_cases,
    unpruned_count,
)
from harness.matrix.codec import ProbeLayout, decode_results, encode_case
from harness.matrix.model import (
    QEMU_TCG,
    SDM,
    Access,
    Case,
    CaseError,
    Choice,
    Controls,
    Cpu,
    Entry,
    Expect,
    Outcome,
    Quirk,
    describe_case,
    observable,
    predict,
)
from harness.matrix.runner import EntryReading, compare
from harness.oracle.paging import PTE_A, PTE_D

FULL = Cpu(maxphyaddr=40, pdpe1gb=True, nx=True, smep=True, smap=True)
QEMU64 = Cpu(maxphyaddr=40, pdpe1gb=False, nx=True, smep=False, smap=False)
READ, WRITE, FETCH = Access.READ, Access.WRITE, Access.FETCH
TABLE = Entry()  # present, writable, user, executable, A clear
S, W, U, F = False, True, True, False


def chain(*entries: Entry, levels: int = 4) -> tuple[Entry, ...]:
    assert len(entries) <= levels
    return entries


def pte(**bits: bool) -> Entry:
    return Entry(**bits)


def case(entries: tuple[Entry, ...], access: Access, cpl: int = 0, levels: int = 4, **controls: bool) -> Case:
    return Case(levels, entries, Controls(access, cpl, **controls))


def four_k(leaf: Entry, *, pml4e: Entry = TABLE, pdpte: Entry = TABLE, pde: Entry = TABLE) -> tuple[Entry, ...]:
    return (pml4e, pdpte, pde, leaf)


# --------------------------------------------------------------------------------------------------
# Hand-worked SDM examples (Vol. 3A §4.6 access rights, §4.7 error code, §4.8 A/D)


def test_supervisor_read_of_a_read_only_supervisor_page_is_allowed_and_sets_every_accessed_bit() -> None:
    p = predict(case(four_k(Entry(writable=False, user=False)), READ), FULL)
    assert p.outcome is Outcome.ALLOWED and p.error_code == 0
    assert p.accessed == (Expect.SET,) * 4
    assert p.dirty == (Expect.UNCHANGED,) * 4  # a read sets no D


def test_a_write_sets_dirty_in_the_leaf_only() -> None:
    p = predict(case(four_k(Entry()), WRITE, cpl=3), FULL)
    assert p.outcome is Outcome.ALLOWED
    assert p.dirty == (Expect.UNCHANGED,) * 3 + (Expect.SET,)


def test_user_read_refused_by_a_supervisor_pde_reports_p_and_us() -> None:
    p = predict(case(four_k(Entry(), pde=Entry(user=False)), READ, cpl=3), FULL)
    assert p.outcome is Outcome.PROTECTION
    assert p.error_code == 0x5  # P, U/S
    assert p.accessed == (Expect.SET, Expect.SET, Expect.SET, Expect.UNCHANGED)  # QEMU: tables yes, 4 KiB leaf no


def test_user_write_refused_by_a_read_only_pml4e_reports_p_w_us() -> None:
    p = predict(case(four_k(Entry(), pml4e=Entry(writable=False)), WRITE, cpl=3), FULL)
    assert p.outcome is Outcome.PROTECTION and p.error_code == 0x7


def test_cr0_wp_decides_supervisor_writes_to_read_only_pages() -> None:
    chain_ro = four_k(Entry(writable=False))
    assert predict(case(chain_ro, WRITE, wp=False), FULL).outcome is Outcome.ALLOWED
    p = predict(case(chain_ro, WRITE, wp=True), FULL)
    assert p.outcome is Outcome.PROTECTION and p.error_code == 0x3


def test_cr0_wp_does_not_matter_to_user_writes() -> None:
    assert predict(case(four_k(Entry(writable=False)), WRITE, cpl=3, wp=False), FULL).error_code == 0x7


def test_smap_refuses_supervisor_data_access_to_user_pages_unless_rflags_ac() -> None:
    user_page = four_k(Entry())
    assert predict(case(user_page, READ, smap=True), FULL).error_code == 0x1
    assert predict(case(user_page, WRITE, smap=True), FULL).error_code == 0x3
    assert predict(case(user_page, READ, smap=True, ac=True), FULL).outcome is Outcome.ALLOWED
    assert predict(case(user_page, FETCH, smap=True), FULL).outcome is Outcome.ALLOWED  # SMAP: data only


def test_smap_leaves_supervisor_pages_alone() -> None:
    assert predict(case(four_k(Entry(user=False)), READ, smap=True), FULL).outcome is Outcome.ALLOWED


def test_smap_with_ac_still_honours_cr0_wp() -> None:
    p = predict(case(four_k(Entry(writable=False)), WRITE, smap=True, ac=True, wp=True), FULL)
    assert p.outcome is Outcome.PROTECTION and p.error_code == 0x3


def test_smep_refuses_supervisor_fetches_from_user_pages_only() -> None:
    p = predict(case(four_k(Entry()), FETCH, smep=True), FULL)
    assert p.outcome is Outcome.PROTECTION and p.error_code == 0x11  # P, I/D
    assert predict(case(four_k(Entry()), FETCH, smep=False), FULL).outcome is Outcome.ALLOWED
    assert predict(case(four_k(Entry()), FETCH, cpl=3, smep=True), FULL).outcome is Outcome.ALLOWED
    assert predict(case(four_k(Entry(user=False)), FETCH, smep=True), FULL).outcome is Outcome.ALLOWED


def test_execute_disable_at_any_level_refuses_fetches_with_nxe() -> None:
    for level_index in range(4):
        entries = list(four_k(Entry()))
        entries[level_index] = replace(entries[level_index], no_execute=True)
        assert predict(case(tuple(entries), FETCH, cpl=3), FULL).error_code == 0x15  # P, U/S, I/D
        assert predict(case(tuple(entries), READ, cpl=3), FULL).outcome is Outcome.ALLOWED


def test_not_present_reports_no_p_and_ignores_every_other_bit() -> None:
    junk = Entry(present=False, writable=False, user=False, no_execute=True, page_size=True, reserved_phys=True)
    p = predict(case((TABLE, junk, TABLE, TABLE), WRITE, cpl=3, nxe=False), FULL)
    assert p.outcome is Outcome.NOT_PRESENT and p.index == 1
    assert p.error_code == 0x6  # W, U/S: no P, no RSVD although its bits would be reserved
    assert p.accessed[1:] == (Expect.UNCHANGED,) * 3


def test_rights_above_a_not_present_entry_do_not_turn_it_into_a_protection_fault() -> None:
    p = predict(case(four_k(Entry(present=False), pml4e=Entry(user=False, writable=False)), WRITE, cpl=3), FULL)
    assert p.outcome is Outcome.NOT_PRESENT and p.error_code == 0x6


def test_instruction_fetch_sets_i_d_only_with_nxe_or_smep() -> None:
    missing = four_k(Entry(present=False))
    assert predict(case(missing, FETCH, nxe=False, smep=False), FULL).error_code == 0x0
    assert predict(case(missing, FETCH, nxe=True), FULL).error_code == 0x10
    assert predict(case(missing, FETCH, nxe=False, smep=True), FULL).error_code == 0x10


def test_a_reserved_bit_higher_up_decides_before_a_missing_leaf() -> None:
    p = predict(case(four_k(Entry(present=False), pdpte=Entry(reserved_phys=True)), READ), FULL, SDM)
    assert p.outcome is Outcome.RESERVED and p.index == 1 and p.error_code == 0x9


@pytest.mark.parametrize("entry, levels, why", [
    (Entry(reserved_phys=True), 4, "bit 40"),
    (Entry(page_size=True), 4, "PS in a PML4E"),
    (Entry(page_size=True), 5, "PS in a PML5E"),
    (Entry(no_execute=True), 4, "XD with EFER.NXE=0"),
])
def test_reserved_bits_of_a_top_level_entry(entry: Entry, levels: int, why: str) -> None:
    entries = (entry, *(TABLE,) * (levels - 1))
    p = predict(Case(levels, entries, Controls(READ, 0, nxe=False)), FULL, SDM)
    assert p.outcome is Outcome.RESERVED and p.error_code == 0x9 and why in p.reason


def test_reserved_bits_decide_before_access_rights() -> None:
    p = predict(case(four_k(Entry(writable=False, user=False, reserved_phys=True)), WRITE, cpl=3), FULL, SDM)
    assert p.outcome is Outcome.RESERVED and p.error_code == 0xF  # P W U/S RSVD


def test_bit_13_is_reserved_in_large_leaves() -> None:
    two_m = (TABLE, TABLE, Entry(page_size=True, reserved_large=True))
    one_g = (TABLE, Entry(page_size=True, reserved_large=True))
    for entries in (two_m, one_g):
        p = predict(case(entries, READ), FULL, SDM)
        assert p.outcome is Outcome.RESERVED and "bit 13" in p.reason


# --------------------------------------------------------------------------------------------------
# QEMU's quirks and choices, each named


def test_quirk_reserved_bit_fault_without_p() -> None:
    entries = four_k(Entry(reserved_phys=True))
    sdm = predict(case(entries, READ), FULL, SDM)
    qemu = predict(case(entries, READ), FULL, QEMU_TCG)
    assert sdm.error_code == 0x9 and sdm.quirks == ()
    assert qemu.error_code == 0x8 and qemu.quirks == (Quirk.RSVD_FAULT_WITHOUT_P,)
    fetch = predict(case(entries, FETCH, cpl=3, nxe=True), FULL, QEMU_TCG)
    assert fetch.error_code == 0x1C  # U/S RSVD I/D, still no P


def test_quirk_one_gib_page_without_pdpe1gb() -> None:
    one_g = (TABLE, Entry(page_size=True))
    sdm = predict(case(one_g, READ), QEMU64, SDM)
    assert sdm.outcome is Outcome.RESERVED and sdm.error_code == 0x9 and "1 GiB pages" in sdm.reason
    qemu = predict(case(one_g, READ), QEMU64, QEMU_TCG)
    assert qemu.outcome is Outcome.ALLOWED and qemu.quirks == (Quirk.PS_1G_WITHOUT_PDPE1GB,)
    assert predict(case(one_g, READ), FULL, QEMU_TCG).quirks == ()  # with pdpe1gb it is no quirk


def test_choice_table_entries_above_a_fault() -> None:
    entries = four_k(Entry(present=False))
    assert predict(case(entries, READ), FULL, QEMU_TCG).accessed[:3] == (Expect.SET,) * 3
    assert predict(case(entries, READ), FULL, SDM).accessed[:3] == (Expect.EITHER,) * 3
    assert QEMU_TCG.choice(Choice.TABLES_ACCESSED_ON_FAULT) is True


def test_choice_an_entry_with_a_reserved_bit_is_not_accessed() -> None:
    entries = four_k(Entry(), pdpte=Entry(reserved_phys=True))
    assert predict(case(entries, READ), FULL, QEMU_TCG).accessed[1] is Expect.UNCHANGED
    assert predict(case(entries, READ), FULL, SDM).accessed[1] is Expect.EITHER


def test_choice_a_faulting_one_gib_leaf_is_accessed_but_a_faulting_two_mib_leaf_is_not() -> None:
    one_g = (TABLE, Entry(page_size=True, user=False))
    two_m = (TABLE, TABLE, Entry(page_size=True, user=False))
    assert predict(case(one_g, READ, cpl=3), FULL).accessed == (Expect.SET, Expect.SET)
    assert predict(case(two_m, READ, cpl=3), FULL).accessed == (Expect.SET, Expect.SET, Expect.UNCHANGED)
    large = (TABLE, Entry(page_size=True, reserved_large=True))  # bit 13: checked after A in a PDPTE
    assert predict(case(large, READ), FULL).accessed == (Expect.SET, Expect.SET)
    phys = (TABLE, Entry(page_size=True, reserved_phys=True))  # checked before A
    assert predict(case(phys, READ), FULL).accessed == (Expect.SET, Expect.UNCHANGED)


def test_a_faulting_write_never_sets_dirty() -> None:
    for platform in (QEMU_TCG, SDM):
        p = predict(case(four_k(Entry(writable=False)), WRITE, cpl=3), FULL, platform)
        assert p.dirty == (Expect.UNCHANGED,) * 4


@pytest.mark.parametrize("entries, problem", [
    ((Entry(reserved_phys=True), TABLE, TABLE, TABLE), "MAXPHYADDR"),
    ((TABLE, TABLE, TABLE, Entry(reserved_large=True)), "bit 13 of a PTE"),
    ((TABLE, TABLE, Entry(reserved_large=True), TABLE), "points to a table"),
    ((TABLE, TABLE, TABLE), "ends in a present table entry"),
])
def test_cases_no_encoding_can_express_are_refused(entries: tuple[Entry, ...], problem: str) -> None:
    cpu = Cpu(maxphyaddr=52) if problem == "MAXPHYADDR" else FULL
    with pytest.raises(CaseError, match=problem):
        predict(case(entries, READ), cpu)


# --------------------------------------------------------------------------------------------------
# The unpruned space and the pruned matrix


def test_controls_space_follows_the_cpu() -> None:
    assert len(controls_space(FULL)) == 3 * 2 * 2**5  # access, CPL, WP SMEP SMAP AC NXE
    assert len(controls_space(QEMU64)) == 3 * 2 * 2**3  # no SMEP, no SMAP
    assert not any(c.smep or c.smap for c in controls_space(QEMU64))


def test_unpruned_count_by_hand() -> None:
    # MAXPHYADDR 52: no reserved address bit. Table entries: P RW US XD A (32), x2 for PS at levels 4-5.
    # Leaves: P RW US XD A D (64), x2 for bit 13 in a large leaf.
    per_controls = 64 * 32 * 32 * 64 + 64 * 32 * 128 + 64 * 128
    assert unpruned_count(4, Cpu(maxphyaddr=52)) == per_controls * 192
    # MAXPHYADDR 40 doubles every entry.
    per_controls_40 = 128 * 64 * 64 * 128 + 128 * 64 * 256 + 128 * 256
    assert unpruned_count(4, FULL) == per_controls_40 * 192


def test_pruned_counts_are_the_ones_the_docs_quote() -> None:
    """docs/access-matrix.md quotes these; a change to the pruning must update the page."""
    assert len(pruned_cases(4, FULL)) == 9846
    assert len(pruned_cases(5, FULL)) == 24218
    assert len(pruned_cases(4, QEMU64)) == 5270


@pytest.mark.parametrize("levels, cpu", [(4, FULL), (5, FULL), (4, QEMU64), (5, QEMU64)], ids=str)
def test_every_pruned_case_is_its_own_representative_and_appears_once(levels: int, cpu: Cpu) -> None:
    cases = pruned_cases(levels, cpu)
    assert len(set(cases)) == len(cases)
    assert all(canonical(c, cpu) == c for c in cases)
    assert {c.levels for c in cases} == {levels}


def test_pruned_matrix_covers_every_outcome_and_quirk() -> None:
    cases = pruned_cases(4, QEMU64)
    predictions = [predict(c, QEMU64) for c in cases]
    assert {p.outcome for p in predictions} == set(Outcome)
    assert {q for p in predictions for q in p.quirks} == set(Quirk)


# -- soundness: expand classes and check every member predicts what its representative does ---------


def _coin(rng: random.Random, p_true: float = 0.5) -> bool:
    return rng.random() < p_true


def _random_entry(rng: random.Random, level: int, leaf: bool, cpu: Cpu) -> Entry:
    phys = cpu.reserved_phys_bit is not None
    return Entry(present=_coin(rng, 0.85), writable=_coin(rng), user=_coin(rng), no_execute=_coin(rng, 0.3),
                 accessed=_coin(rng), dirty=leaf and _coin(rng),
                 page_size=(leaf and level >= 2) or (level >= 4 and _coin(rng, 0.1)),
                 reserved_phys=phys and _coin(rng, 0.1), reserved_large=leaf and level >= 2 and _coin(rng, 0.1))


def random_member(rng: random.Random, levels: int, cpu: Cpu) -> Case:
    """A case of the unpruned space, biased towards walks that go deep."""
    leaf = rng.choice((1, 2, 3))
    entries = tuple(_random_entry(rng, level, level == leaf, cpu) for level in range(levels, leaf - 1, -1))
    return Case(levels, entries, rng.choice(controls_space(cpu)))


def _extend(rep: Case, rng: random.Random, cpu: Cpu) -> Case:
    """A member of the unpruned space in rep's class: rep's chain, continued to a leaf with random entries."""
    level = rep.level(len(rep.entries) - 1)
    last = rep.entries[-1]
    if level == 1 or (level in (2, 3) and last.page_size):
        return rep
    leaf = rng.randint(1, min(level - 1, 3))
    tail = tuple(_random_entry(rng, lv, lv == leaf, cpu) for lv in range(level - 1, leaf - 1, -1))
    return replace(rep, entries=rep.entries + tail)


def _flips(member: Case, cpu: Cpu) -> list[Case]:
    """Every case of the unpruned space one dimension away from member (same shape)."""
    out = []
    leaf_index = len(member.entries) - 1
    for i, entry in enumerate(member.entries):
        level = member.level(i)
        names = ["present", "writable", "user", "no_execute", "accessed"]
        if i == leaf_index:
            names += ["dirty"] + (["reserved_large"] if level >= 2 else [])
        if level >= 4:
            names.append("page_size")
        if cpu.reserved_phys_bit is not None:
            names.append("reserved_phys")
        for name in names:
            flipped = replace(entry, **{name: not getattr(entry, name)})
            out.append(replace(member, entries=(*member.entries[:i], flipped, *member.entries[i + 1:])))
    c = member.controls
    others = [replace(c, access=a) for a in Access if a is not c.access] + [replace(c, cpl=3 - c.cpl)]
    for name, available in (("wp", True), ("smep", cpu.smep), ("smap", cpu.smap), ("ac", True), ("nxe", cpu.nx)):
        if available:
            others.append(replace(c, **{name: not getattr(c, name)}))
    out.extend(replace(member, controls=o) for o in others)
    return out


@functools.cache
def _observable(rep: Case, cpu: Cpu) -> tuple[object, ...]:
    return observable(rep, predict(rep, cpu))


def _assert_same_test(member: Case, rep: Case, cpu: Cpu) -> None:
    p = predict(member, cpu)
    assert observable(member, p) == _observable(rep, cpu), (
        f"pruning merged two cases the model tells apart:\n{describe_case(member, cpu)}\n"
        f"and its representative\n{describe_case(rep, cpu)}")
    assert all(a is Expect.UNCHANGED for a in p.accessed[p.index + 1:])  # below the stop nothing is touched


@pytest.mark.parametrize("levels, cpu", [(4, FULL), (5, FULL), (4, QEMU64)], ids=str)
def test_random_members_of_the_unpruned_space_land_on_a_pruned_case_that_predicts_the_same(levels: int,
                                                                                            cpu: Cpu) -> None:
    """If every member predicts what its representative predicts, no two members of one class can differ:
    pruning never merges two cases the model distinguishes."""
    pruned = set(pruned_cases(levels, cpu))
    rng = random.Random(levels * 1000 + cpu.pdpe1gb)
    for _ in range(1500):
        member = random_member(rng, levels, cpu)
        rep = canonical(member, cpu)
        assert rep in pruned, f"no pruned case stands for\n{describe_case(member, cpu)}\n(canonical:\n" \
                              f"{describe_case(rep, cpu)})"
        _assert_same_test(member, rep, cpu)


@pytest.mark.parametrize("levels, cpu, share", [(4, FULL, 10), (5, FULL, 40), (4, QEMU64, 8)], ids=str)
def test_walks_inside_each_class_never_change_the_prediction(levels: int, cpu: Cpu, share: int) -> None:
    """From a sample of the representatives (one in ``share``), random walks of single-bit changes that
    stay in the class: every member reached predicts what the representative does, and every step that
    leaves the class lands on another pruned case."""
    pruned = set(pruned_cases(levels, cpu))
    rng = random.Random(7)
    reps = sorted(pruned, key=repr)[::share]
    for rep in reps:
        member = _extend(rep, rng, cpu)
        assert canonical(member, cpu) == rep
        for _ in range(3):
            neighbours = _flips(member, cpu)
            rng.shuffle(neighbours)
            for neighbour in neighbours[:6]:
                target = canonical(neighbour, cpu)
                assert target in pruned
                if target == rep:
                    _assert_same_test(neighbour, rep, cpu)
                    member = neighbour
                    break


@pytest.mark.parametrize("controls", [
    Controls(WRITE, 0, wp=True, smap=True, ac=False, nxe=True),
    Controls(FETCH, 3, smep=True, nxe=False),
], ids=str)
def test_every_bit_of_a_one_gib_chain_exhaustively(controls: Controls) -> None:
    """All 2^15 settings of a 4-level chain to a 1 GiB leaf (PML4E: P RW US XD A PS MAXPHYADDR-bit;
    PDPTE: P RW US XD A D MAXPHYADDR-bit bit-13) under one control setting each."""
    pruned = set(pruned_cases(4, FULL))
    for bits in itertools.product((False, True), repeat=15):
        top = Entry(*bits[0:5], page_size=bits[5], reserved_phys=bits[6])
        leaf = Entry(*bits[7:12], dirty=bits[12], page_size=True, reserved_phys=bits[13], reserved_large=bits[14])
        member = Case(4, (top, leaf), controls)
        rep = canonical(member, FULL)
        assert rep in pruned
        _assert_same_test(member, rep, FULL)


def test_every_control_setting_of_a_sample_of_classes() -> None:
    """For one representative in 60, every control setting of the CPU whose canonical form is its own."""
    pruned = pruned_cases(4, FULL)
    for rep in pruned[::60]:
        outcome = predict(rep, FULL).outcome
        for c in controls_space(FULL):
            if canonical_controls(c, outcome) != rep.controls:
                continue
            member = replace(rep, controls=c)
            assert canonical(member, FULL) == rep
            _assert_same_test(member, rep, FULL)


# --------------------------------------------------------------------------------------------------
# The codec and the comparison


LAYOUT = ProbeLayout(levels=4, root_pa=0x100000, tables_pa=0x400000, code_pa=0x7000000, data_pa=0x7001000,
                     slots=(1, 2, 300), maxphyaddr=40, ring0_read=0xFFFFF80000202116,
                     ring0_write=0xFFFFF8000020211B, ring3_read=0x2000000C, ring3_write=0x20000011)


def test_encode_case_spells_controls_and_entries() -> None:
    c = Case(4, (Entry(accessed=True), Entry(no_execute=True, reserved_phys=True),
                 Entry(page_size=True, reserved_large=True, writable=False, dirty=True)),
             Controls(FETCH, 3, wp=True, smep=True, smap=True, ac=True, nxe=True))
    assert encode_case(c) == bytes((0xFE, 3)) + (0x27).to_bytes(2, "little") + (0x607).to_bytes(2, "little") \
        + (0x8C5).to_bytes(2, "little")


def test_layout_addresses_by_hand() -> None:
    va = LAYOUT.va(2, Access.WRITE)  # slot 300: the upper half, sign-extended
    assert va == 0xFFFF960000000000 + 0x7001000 + 0x200
    assert LAYOUT.entry_address(2, 4, va) == 0x100000 + 8 * 300
    assert LAYOUT.table_pa(2, 3) == 0x400000 + (2 * 3 + 0) * 0x1000
    assert LAYOUT.table_pa(2, 1) == 0x400000 + (2 * 3 + 2) * 0x1000
    assert LAYOUT.entry_address(2, 1, va) == LAYOUT.table_pa(2, 1) + 8 * 1  # VA bits 20:12 of 0x7001000
    table = Entry(writable=False, no_execute=True)
    assert LAYOUT.entry_value(2, 4, table, Access.WRITE) == (1 << 63) | LAYOUT.table_pa(2, 3) | 0x5
    one_g = Entry(page_size=True, reserved_large=True)
    assert LAYOUT.entry_value(2, 3, one_g, Access.READ) == 0x87 | 1 << 13  # 1 GiB base of 0x7001000 is 0
    two_m = Entry(page_size=True, reserved_phys=True)
    assert LAYOUT.entry_value(0, 2, two_m, Access.FETCH) == 0x7000000 | 0x87 | 1 << 40


def test_decode_results_refuses_a_short_answer() -> None:
    with pytest.raises(ProtocolError, match="28"):
        decode_results(bytes(27), 1)


def _readings(c: Case, prediction_accessed: bool) -> list[EntryReading]:
    out = []
    for i, entry in enumerate(c.entries):
        level = c.level(i)
        built = LAYOUT.entry_value(0, level, entry, c.controls.access)
        out.append(EntryReading(level, 0x1000 * i, built, built | (PTE_A if prediction_accessed else 0)))
    return out


def test_compare_reports_each_way_an_observation_can_differ() -> None:
    c = case(four_k(Entry(user=False)), READ, cpl=3)
    p = predict(c, FULL)  # #PF 0x5
    va = LAYOUT.va(0, READ)
    readings = _readings(c, True)
    readings[3] = replace(readings[3], read=readings[3].built | PTE_A | PTE_D)  # leaf A and D set: both wrong
    completed = decode_results(bytes((0xFF, 3, 0, 0)) + bytes(24), 1)[0]
    problems = compare(c, p, completed, va, LAYOUT, readings)
    assert any(x.startswith("outcome:") for x in problems)
    assert any("A bit: the PTE's A was set" in x for x in problems)
    assert any("D bit: the PTE's D was set" in x for x in problems)
    wrong = decode_results(bytes((14, 3, 7, 0)) + (va + 8).to_bytes(8, "little") + (5).to_bytes(8, "little")
                           + bytes(8), 1)[0]
    problems = compare(c, p, wrong, va, LAYOUT, _readings(c, False))
    kinds = {x.split(":")[0] for x in problems}
    assert kinds == {"error code", "CR2", "RIP", "A bit"}  # tables not accessed: three A-bit problems
