"""The DDI fuzzer's host model, without a guest: its bookkeeping, its leak counts, its determinism.

`StandIn` answers the model's calls with well-formed results (unique addresses from bump allocators,
success statuses) so that the model's own state can be driven through thousands of calls. It proves
nothing about the kernel; the VM tests (tests/vm/test_fuzz_ddi.py) do that.
"""

import random
from typing import Any

from harness.ddi.copy import CopyResult
from harness.ddi.dxgk import CreateResult, MapResult, OpenResult
from harness.ddi.mdl import NtRaisedStatus
from harness.ddi.nt import (
    STATUS_INVALID_ADDRESS,
    STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER_3,
    STATUS_INVALID_PARAMETER_4,
)
from harness.ddi.pool import POOL_FLAG_CACHE_ALIGNED
from harness.fuzz.model import (
    BAD_POOL_CALLER,
    COUNTED,
    PAGE,
    POOL_SMALL_MAX,
    SYSTEM_PTE_BASE,
    SYSTEM_PTE_MISUSE,
    USER_VIEW_BASE,
    Call,
    Environment,
    MapCheck,
    Model,
    UnmapCheck,
    tag_key,
)

ENV = Environment(levels=4, pool_base=0xFFFF_FA80_4000_0000, pool_end=0xFFFF_FA80_8000_0000,
                  text=(0xFFFF_F800_0020_0000, 0xFFFF_F800_0024_0000), nx=True, ram_top=0x1000_0000)


# The documented failures a call's outcome may ask for, tried when the success result does not fit.
FAILURES = (0, None, CreateResult(STATUS_INVALID_PARAMETER, 0, 0), MapResult(STATUS_INVALID_PARAMETER, 0, 0, 0),
            MapResult(STATUS_INVALID_HANDLE, 0, 0, 0), OpenResult(STATUS_INVALID_PARAMETER, 0),
            CopyResult(STATUS_INVALID_PARAMETER_4, 0), CopyResult(STATUS_INVALID_ADDRESS, 0), CopyResult(0, 0),
            NtRaisedStatus("MmMapLockedPagesSpecifyCache", STATUS_INVALID_PARAMETER_3))


class StandIn:
    """Results for the model's calls: fresh addresses that never repeat, success where it is asked
    for, else the documented failure the outcome names."""

    def answer(self, model: Model, call: Call) -> Any:
        assert call.outcome.check is not None
        for candidate in (self.result(model, call), *FAILURES):
            try:
                if not call.outcome.check(candidate):
                    return candidate
            except (AssertionError, AttributeError, TypeError):
                continue
        raise AssertionError(f"no result fits {call.describe()}: {call.outcome.description}")

    def __init__(self) -> None:
        self.pool = ENV.pool_base
        self.system = SYSTEM_PTE_BASE + 2 * PAGE
        self.user = USER_VIEW_BASE

    def _pool(self, size: int, page_aligned: bool) -> int:
        if page_aligned:
            self.pool = -(-self.pool // PAGE) * PAGE
            va = self.pool
            self.pool += -(-size // PAGE) * PAGE
            return va
        if self.pool % PAGE + 16 + size > PAGE:
            self.pool = -(-self.pool // PAGE) * PAGE
        va = self.pool + 16
        self.pool = va + -(-size // 16) * 16
        return va

    def _system(self, pages: int) -> int:
        va = self.system
        self.system += (pages + 3) * PAGE
        return va

    def result(self, model: Model, call: Call) -> Any:
        d, a = call.ddi, call.args
        if d == "ExAllocatePoolWithTag":
            return self._pool(a[1], a[1] > POOL_SMALL_MAX)
        if d == "ExAllocatePool2":
            return self._pool(a[1], a[1] > POOL_SMALL_MAX or bool(a[0] & POOL_FLAG_CACHE_ALIGNED))
        if d in ("IoAllocateMdl", "MmAllocatePagesForMdlEx"):
            return self._pool(0x30 + 8 * 20, False)
        if d in ("MmMapLockedPagesSpecifyCache", "MmGetSystemAddressForMdlSafe"):
            m = model.mdls[a[0]]
            if d == "MmGetSystemAddressForMdlSafe" and (m.built or m.system_va):
                return m.va if m.built else m.system_va
            if d == "MmMapLockedPagesSpecifyCache" and a[1] == 1:
                va = self.user
                self.user += m.pages * PAGE
                return va + m.offset
            return self._system(m.pages) + m.offset
        if d in ("MmAllocateMappingAddress", "MmAllocateMappingAddressEx"):
            return self._system(a[0] // PAGE)
        if d == "MmMapLockedPagesWithReservedMapping":
            return a[0] + model.mdls[a[2]].offset
        if d in ("MmMapIoSpace", "MmMapIoSpaceEx"):
            return self._system(4) + a[0] % PAGE
        if d.startswith("MmAllocateContiguousMemory"):
            return self._system(-(-a[0] // PAGE))
        if d == "MmCopyMemory":
            return CopyResult(0, a[2])
        if d == "DxgkCbCreatePhysicalMemoryObject":
            return CreateResult(0, self._pool(0x80, False), self._pool(0x10, False) if a[0] else 0)
        if d == "DxgkCbMapPhysicalMemory":
            first, last = a[2] // PAGE, (a[2] + a[3] - 1) // PAGE
            base = self._system(last - first + 1) if a[1] == 0 else self.user
            if a[1] == 1:
                self.user += (last - first + 1) * PAGE
            return MapResult(0, a[2] % PAGE, (last - first + 1) * PAGE, base)
        if d == "DxgkCbOpenPhysicalMemoryObject":
            return OpenResult(0, self._pool(0x10, False))
        if d == "KeRaiseIrql":
            return model.irql
        if d == "KeGetCurrentIrql":
            return model.irql
        return None


def drive(seed: int, calls: int, stop_rate: float = 0.02) -> tuple[Model, list[str], list[dict[str, int]]]:
    """The runner's loop with the stand-in: a stop resets the model (the runner reboots)."""
    model, stand_in, rng = Model(ENV, stop_rate=stop_rate), StandIn(), random.Random(seed)
    log, counts = [], []
    for index in range(calls):
        call = model.propose(rng)
        log.append(call.describe())
        if call.outcome.stops:
            assert call.outcome.check is None and all(len(s.parameters) == 4 for s in call.outcome.stops)
            model.reset()
            continue
        result = stand_in.answer(model, call)
        model.recent = ()
        call.commit(result)
        counts.append(model.expected_counts())
        if index % 150 == 149:
            while (teardown := model.teardown_call()) is not None:
                teardown.commit(stand_in.answer(model, teardown))
            assert model.empty
    return model, log, counts


def test_every_count_the_model_predicts_stays_non_negative_and_teardown_empties_it() -> None:
    model, _, counts = drive(1, 3000)
    assert all(value >= 0 for c in counts for value in c.values())
    assert any(c["mdl_mapped_pages"] for c in counts) and any(c["dxgk_mappings"] for c in counts)
    stand_in = StandIn()
    while (call := model.teardown_call()) is not None:
        call.commit(stand_in.answer(model, call))
    assert model.empty
    assert set(model.expected_counts().values()) == {0}


def test_the_same_seed_draws_the_same_calls() -> None:
    assert drive(7, 800)[1] == drive(7, 800)[1]
    assert drive(7, 800)[1] != drive(8, 800)[1]


def test_every_family_and_documented_stops_are_drawn() -> None:
    model, stand_in, rng = Model(ENV, stop_rate=0.05), StandIn(), random.Random(3)
    families, stops = set(), set()
    for _ in range(4000):
        call = model.propose(rng)
        families.add(call.family)
        if call.outcome.stops:
            stops.update(s.code for s in call.outcome.stops)
            model.reset()
            continue
        model.recent = ()
        call.commit(stand_in.answer(model, call))
    assert families == {"pool", "mdl", "reserved", "iospace", "contiguous", "copy", "dxgk", "irql"}
    assert {BAD_POOL_CALLER, SYSTEM_PTE_MISUSE, 0xC4, 0x9, 0xA} <= stops


def test_a_reservation_counts_its_two_header_ptes_and_a_mapping_its_pages() -> None:
    model, stand_in = Model(ENV), StandIn()
    reserve = model._reserved_allocate(random.Random(1))
    assert reserve is not None
    checks = reserve.commit(stand_in.result(model, reserve))
    r = next(iter(model.reservations.values()))
    assert model.expected_counts()["syspte_pages"] == r.pages + 2
    assert model.expected_counts()["reserved_mapping_reservations"] == 1
    assert any(isinstance(c, UnmapCheck) and c.va == r.va for c in checks), "fresh data PTEs are empty"
    allocate = model._mdl_allocate_pages(random.Random(5))
    assert allocate is not None and not allocate.outcome.stops
    allocate.commit(stand_in.result(model, allocate))
    assert model.expected_counts()["mdl_allocated_pages"] == next(iter(model.mdls.values())).pages


def test_a_new_pool_block_must_not_overlap_a_live_one_and_its_tag_is_charged() -> None:
    model, stand_in, rng = Model(ENV), StandIn(), random.Random(2)
    call = model._pool_alloc(rng)
    assert call is not None and call.outcome.check is not None
    va = stand_in.result(model, call)
    checks = call.commit(va)
    block = model.pool[va]
    assert any(isinstance(c, MapCheck) and c.va == va for c in checks)
    assert model.expected_counts()[tag_key(block.tag)] == block.charged > 0
    assert set(COUNTED) <= set(model.expected_counts())
    same_place = model._new_block_outcome(block.size, page_aligned=block.whole_pages)
    assert "overlaps" in same_place(va), "the same VA again is a finding"
    assert same_place(0).startswith("NULL")
    assert "outside the pool" in same_place(ENV.pool_end)


def test_misuse_stops_carry_the_documented_parameters() -> None:
    model, stand_in, rng = Model(ENV), StandIn(), random.Random(4)
    call = model._pool_alloc(rng)
    assert call is not None
    va = stand_in.result(model, call)
    call.commit(va)
    block = model.pool[va]
    options = []
    for seed in range(200):
        misuse = model._misuse(random.Random(seed))
        assert misuse is not None
        options += [s for s in misuse.outcome.stops]
    wrong_tag = [s for s in options if s.code == BAD_POOL_CALLER and s.parameters[0] == 0x0A]
    assert wrong_tag and wrong_tag[0].parameters == (0x0A, block.va, int.from_bytes(block.tag.encode(), "little"),
                                                     int.from_bytes(b"Ofzx", "little"))
    user_free = [s for s in options if s.code == BAD_POOL_CALLER and s.parameters[0] == 0x40]
    assert user_free and user_free[0].parameters == (0x40, 0x1000, 0xFFFF_8000_0000_0000, 0)
