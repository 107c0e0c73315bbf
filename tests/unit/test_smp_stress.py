"""smp_stress records and the double-handout check (harness.ddi.smp), without a guest."""

import struct

import pytest

from harness.ddi.smp import StressAllocation, double_handouts, parse_stress_records
from harness.errors import ProtocolError

PAGE = 0x1000


def record(held_from: int, held_until: int, va: int, size: int, pfn0: int = 0, pfn1: int = 0) -> bytes:
    return struct.pack("<6Q", held_from, held_until, va, size, pfn0, pfn1)


def alloc(cpu: int, held_from: int, held_until: int | None, va: int, size: int = 2 * PAGE,
          pfns: tuple[int, ...] = (), family: str = "system_ptes") -> StressAllocation:
    return StressAllocation(family, cpu, held_from, held_until, va, size, pfns)


def test_records_decode_with_zero_until_as_still_held_and_small_pool_blocks_owning_no_frame() -> None:
    data = record(1, 5, 0x1000, 48, 0x77) + record(2, 0, 0x8000, 2 * PAGE, 0x10, 0x11)
    small, big = parse_stress_records("pool", 3, data)
    assert (small.cpu, small.held_until, small.pfns) == (3, 5, ())
    assert (big.held_until, big.pfns) == (None, (0x10, 0x11))


def test_a_truncated_record_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no whole number of records"):
        parse_stress_records("pool", 0, record(1, 2, 3, 4)[:-1])


def test_va_ranges_include_the_pool_header_and_the_reservation_headers() -> None:
    assert alloc(0, 1, 2, 0x5010, 32, family="pool").va_range == (0x5000, 0x5030)
    assert alloc(0, 1, 2, 0x5000, 2 * PAGE, family="pool").va_range == (0x5000, 0x7000)
    assert alloc(0, 1, 2, 0x9000, family="reserved_mappings").va_range == (0x7000, 0xB000)


def test_reuse_after_release_is_no_double_handout() -> None:
    first = alloc(0, 1, 4, 0x10000, pfns=(5, 6))
    again = alloc(1, 5, None, 0x10000, pfns=(5, 6))  # held from after the first was let go
    assert double_handouts([first, again]) == []


def test_the_same_pte_held_twice_at_once_is_reported() -> None:
    found = double_handouts([alloc(0, 1, 10, 0x10000), alloc(1, 3, 4, 0x11000)])  # overlapping VA
    assert len(found) == 1 and found[0].startswith("VA handed out twice") and "CPU 1" in found[0]


def test_the_same_frame_held_twice_at_once_is_reported_even_at_different_vas() -> None:
    found = double_handouts([alloc(0, 1, None, 0x10000, pfns=(5, 6)), alloc(2, 7, 9, 0x40000, pfns=(9, 6))])
    assert len(found) == 1 and "frame(s) ['0x6']" in found[0]


def test_a_reservation_overlapping_another_ones_header_ptes_is_reported() -> None:
    a = alloc(0, 1, None, 0x12000, family="reserved_mappings")  # owns 0x10000-0x14000
    b = alloc(1, 2, None, 0x16000, family="reserved_mappings")  # owns 0x14000-0x18000: adjacent, fine
    c = alloc(2, 3, None, 0x19000, family="reserved_mappings")  # its header PTEs sit in b's last page
    assert double_handouts([a, b]) == []
    assert len(double_handouts([a, b, c])) == 1


def test_allocations_that_were_never_held_together_are_never_compared() -> None:
    earlier = [alloc(0, 2 * i + 1, 2 * i + 2, 0x10000) for i in range(5)]  # one VA, reused in turn
    assert double_handouts(earlier) == []
