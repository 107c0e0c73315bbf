"""The batch codec of the access probe (driver_src/include/access_probe.h), and where its entries are.

A batch is one bytes value: per case, a controls byte, an entry count and one little-endian u16 per
entry. The answer holds 28 bytes per case. The probe's setup answer (:class:`ProbeLayout`) says where
each case's entries live in guest RAM; the host computes from it, on its own, every entry's address
and the value the guest must have built there, and reads the entries back after the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from harness.errors import ProtocolError
from harness.matrix.model import LARGE_RESERVED_BIT, Access, Case, Entry
from harness.oracle.paging import (
    ADDR_MASK_4K,
    PAGE_SIZE,
    PTE_A,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    SIZE_1G,
    index_of,
    leaf_addr_mask,
    level_shift,
    sign_extend,
    va_bits,
)

CONTROL_CPL3: Final = 1 << 2
CONTROL_WP: Final = 1 << 3
CONTROL_SMEP: Final = 1 << 4
CONTROL_SMAP: Final = 1 << 5
CONTROL_AC: Final = 1 << 6
CONTROL_NXE: Final = 1 << 7
SPEC_XD: Final = 1 << 9
SPEC_RESERVED_PHYS: Final = 1 << 10
SPEC_RESERVED_LARGE: Final = 1 << 11

FETCH_OFFSET: Final = 0x000
READ_OFFSET: Final = 0x100
WRITE_OFFSET: Final = 0x200
SIGNATURE: Final = 0x5AC3A5F00FA55A3C  # the qword at READ_OFFSET of the data page
NO_VECTOR: Final = 0xFF
VECTOR_PAGE_FAULT: Final = 14
RESULT: Final = struct.Struct("<BBHQQQ")  # vector, ring, error code, CR2, RIP, value: 28 bytes
OFFSETS: Final = {Access.FETCH: FETCH_OFFSET, Access.READ: READ_OFFSET, Access.WRITE: WRITE_OFFSET}


@dataclass(frozen=True)
class ProbeLayout:
    """The probe space as access_probe_setup describes it."""

    levels: int
    root_pa: int  # the top-level table: case i's top entry is slot ``slots[i]`` there
    tables_pa: int  # case i's table for level k is at tables_pa + (i * (levels - 1) + levels - 1 - k) pages
    code_pa: int  # the page fetches run (RET at FETCH_OFFSET)
    data_pa: int  # the page reads and writes reach
    slots: tuple[int, ...]
    maxphyaddr: int
    ring0_read: int  # the instructions a data access faults at
    ring0_write: int
    ring3_read: int
    ring3_write: int

    @property
    def batch_size(self) -> int:
        return len(self.slots)

    def target_pa(self, access: Access) -> int:
        return self.code_pa if access is Access.FETCH else self.data_pa

    def va(self, index: int, access: Access) -> int:
        """The VA case ``index`` of a batch accesses: its slot, the target page's offset in a 1 GiB page
        (so that a leaf of any size maps the target), the access's offset in the page."""
        base = sign_extend(self.slots[index] << level_shift(self.levels), va_bits(self.levels))
        return base + (self.target_pa(access) & (SIZE_1G - 1)) + OFFSETS[access]

    def table_pa(self, index: int, level: int) -> int:
        return self.tables_pa + (index * (self.levels - 1) + self.levels - 1 - level) * PAGE_SIZE

    def entry_address(self, index: int, level: int, va: int) -> int:
        table = self.root_pa if level == self.levels else self.table_pa(index, level)
        return table + 8 * index_of(va, level)

    def entry_value(self, index: int, level: int, entry: Entry, access: Access) -> int:
        """What the guest must write for ``entry``: its bits, and the next table's address, or the
        target page's where the entry maps a page (level 1, or PS at level 2 or 3)."""
        value = _flag_bits(entry)
        if entry.no_execute:
            value |= PTE_NX
        if entry.reserved_phys:
            value |= 1 << self.maxphyaddr
        if entry.reserved_large:
            value |= 1 << LARGE_RESERVED_BIT
        if level == 1 or (entry.page_size and level <= 3):
            value |= self.target_pa(access) & leaf_addr_mask(level)
        else:
            value |= self.table_pa(index, level - 1) & ADDR_MASK_4K
        return value

    def fault_rip(self, case: Case, va: int) -> int:
        """Where the access faults: the data access instruction of its ring, or the fetched VA."""
        c = case.controls
        if c.access is Access.FETCH:
            return va
        if c.cpl == 3:
            return self.ring3_write if c.access is Access.WRITE else self.ring3_read
        return self.ring0_write if c.access is Access.WRITE else self.ring0_read


def _flag_bits(entry: Entry) -> int:
    return ((PTE_P if entry.present else 0) | (PTE_RW if entry.writable else 0) | (PTE_US if entry.user else 0)
            | (PTE_A if entry.accessed else 0) | (PTE_D if entry.dirty else 0) | (PTE_PS if entry.page_size else 0))


def encode_case(case: Case) -> bytes:
    c = case.controls
    controls = (int(c.access) | (CONTROL_CPL3 if c.cpl == 3 else 0) | (CONTROL_WP if c.wp else 0)
                | (CONTROL_SMEP if c.smep else 0) | (CONTROL_SMAP if c.smap else 0) | (CONTROL_AC if c.ac else 0)
                | (CONTROL_NXE if c.nxe else 0))
    out = bytearray((controls, len(case.entries)))
    for entry in case.entries:
        spec = (_flag_bits(entry) | (SPEC_XD if entry.no_execute else 0)
                | (SPEC_RESERVED_PHYS if entry.reserved_phys else 0)
                | (SPEC_RESERVED_LARGE if entry.reserved_large else 0))
        out += spec.to_bytes(2, "little")
    return bytes(out)


def encode_batch(cases: Sequence[Case]) -> bytes:
    return b"".join(encode_case(case) for case in cases)


@dataclass(frozen=True)
class Observation:
    """What the guest saw for one case: the exception (None: the access completed), the ring it was
    taken from, its error code, CR2 and RIP, and RAX (the qword a completed read loaded)."""

    vector: int | None
    ring: int
    error_code: int
    cr2: int
    rip: int
    value: int

    def describe(self) -> str:
        if self.vector is None:
            return f"the access completed in ring {self.ring} (RAX {self.value:#x})"
        name = "#PF" if self.vector == VECTOR_PAGE_FAULT else f"vector {self.vector}"
        return (f"{name} from ring {self.ring}, error code {self.error_code:#x}, CR2 {self.cr2:#x}, "
                f"RIP {self.rip:#x}")


def decode_results(data: bytes, count: int) -> list[Observation]:
    if len(data) != count * RESULT.size:
        raise ProtocolError(f"access_probe_batch answered {len(data)} bytes of results for {count} cases; "
                            f"each takes {RESULT.size}")
    out = []
    for i in range(count):
        vector, ring, error, cr2, rip, value = RESULT.unpack_from(data, i * RESULT.size)
        out.append(Observation(None if vector == NO_VECTOR else vector, ring, error, cr2, rip, value))
    return out
