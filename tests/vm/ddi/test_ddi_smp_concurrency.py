"""DDIs called from every CPU at the same moment (docs/smp.md, smp_stress): pool, system PTEs (MDL
mappings of MmAllocatePagesForMdl pages) and reserved mappings.

Every CPU meets the others at a start barrier, then replaces each of its four held allocations round
after round, so allocations of different CPUs are held at the same time. The records say, for each
allocation, the interval in which its CPU certainly held it; two allocations held at once must share
no VA (no PTE) and no frame (harness.ddi.smp.double_handouts). The last round's allocations stay held:
a sample is verified three ways and its markers are read back by the host through its own walk, and
the leak counts must then be exactly what is held, and exactly what they were once it is released.
"""

from __future__ import annotations

import struct
from itertools import combinations

import pytest

from harness.ddi.base import pool_tag
from harness.ddi.mdl import TAG_MDL
from harness.ddi.smp import STRESS_HELD, StressAllocation, StressResult, double_handouts
from harness.errors import AgentError
from harness.vm import Vm

PAGE = 0x1000
ROUNDS = 16
STRESS_PAGES = 2
MARKER = 0x6D6D68696C534D50  # driver_src/agent/cmd_smp.c

pytestmark = pytest.mark.requires(smp=2)


def pool_charge(size: int) -> int:
    """What the pool charges a tag for `size` bytes (docs/ddi/pool.md): 16-byte units, or whole pages."""
    return -(-size // 16) * 16 if size < PAGE else -(-size // PAGE) * PAGE


def tag_key(tag: str | int) -> str:
    return f"pool_tag_{pool_tag(tag):08x}"


def expected_growth(vm: Vm, result: StressResult) -> dict[str, int]:
    """What the held allocations must add to `outstanding`, key by key, and nothing else."""
    held = result.held
    n = len(held)
    if result.family == "pool":
        growth = {"pool_bytes": sum(pool_charge(a.size) for a in held)}
        for cpu in range(vm.vcpus):
            growth[tag_key(f"Smp{cpu}")] = sum(pool_charge(a.size) for a in held if a.cpu == cpu)
        return growth
    mdl_bytes = pool_charge(vm.mm.MmSizeOfMdl(0, STRESS_PAGES * PAGE))
    growth = {"pool_bytes": n * mdl_bytes, tag_key(TAG_MDL): n * mdl_bytes,
              "mdl_allocated_pages": n * STRESS_PAGES, "syspte_allocations": n}
    if result.family == "system_ptes":
        return {**growth, "mdl_mapped_pages": n * STRESS_PAGES, "syspte_pages": n * STRESS_PAGES}
    return {**growth, "reserved_mapping_reservations": n, "reserved_mapping_mapped_pages": n * STRESS_PAGES,
            "syspte_pages": n * (STRESS_PAGES + 2)}


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def expected_marker(a: StressAllocation, page: int) -> bytes:
    return struct.pack("<QQ", MARKER ^ a.cpu << 56 ^ a.held_from, a.va + page * PAGE)


def check_held_three_ways(vm: Vm, a: StressAllocation) -> None:
    """The agent on the CPU that allocated it, the host walk, and gva2gpa on every vCPU agree; the PA is
    the frame the CPU recorded, and the host reads there the marker the CPU wrote."""
    pa = vm.verify.translate(a.va)
    assert vm.mm.on_cpu(a.cpu).MmGetPhysicalAddress(a.va) == pa
    assert pa is not None
    if a.pfns:
        assert pa >> 12 == a.pfns[0], a.describe()
    for page in range(max(1, a.size // PAGE)):
        assert vm.verify.host_read(a.va + page * PAGE, 16) == expected_marker(a, page), a.describe()


@pytest.mark.parametrize("family", ["pool", "system_ptes", "reserved_mappings"])
def test_ddis_on_every_cpu_at_once_never_hand_out_one_pte_or_frame_twice_and_account_exactly(
        vm: Vm, family: str) -> None:
    before = vm.mm.outstanding()
    result = vm.mm.smp_stress(family, ROUNDS, range(vm.vcpus))
    assert result.corrupted == 0, "an allocation's marker was overwritten while its CPU held it"
    for cpu in range(vm.vcpus):
        assert len(result.of_cpu(cpu)) == ROUNDS * STRESS_HELD, f"CPU {cpu}: a DDI call failed"
    assert any(a.cpu != b.cpu and a.held_with(b) for a, b in combinations(result.allocations, 2)), \
        "no two CPUs held allocations at the same time: the run proved nothing"
    assert double_handouts(result.allocations) == []

    held = result.held
    assert len(held) == STRESS_HELD * vm.vcpus
    for a in held[:: max(1, len(held) // 6)]:
        check_held_three_ways(vm, a)
    assert growth(before, vm.mm.outstanding()) == expected_growth(vm, result)

    assert vm.mm.smp_stress_release() == len(held)
    if family != "pool":  # pool pages of small blocks stay mapped once used
        vm.verify.assert_unmapped(held[0].va, PAGE)
    assert vm.mm.outstanding() == before


def test_smp_stress_refuses_what_it_cannot_run(vm: Vm) -> None:
    every = (1 << vm.vcpus) - 1
    for values, why in [((0, 1, every), "family"), ((1, 0, every), "rounds"), ((1, 33, every), "rounds"),
                        ((1, 1, 0), "cpu_mask"), ((1, 1, 1 << vm.vcpus), "cpu_mask")]:
        with pytest.raises(AgentError, match=why) as caught:
            vm.request("smp_stress", *values)
        assert caught.value.kind == "bad-argument"
    vm.mm.smp_stress("pool", 1, [0, 1])
    with pytest.raises(AgentError, match="smp_stress_release first"):
        vm.mm.smp_stress("pool", 1, [0, 1])
    assert vm.mm.smp_stress_release() == 2 * STRESS_HELD
    cpu1 = vm.mm.on_cpu(1)
    with cpu1.at_irql(1), pytest.raises(AgentError, match="PASSIVE_LEVEL"):
        vm.mm.smp_stress("pool", 1, [0, 1])
