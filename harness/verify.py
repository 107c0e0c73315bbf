"""Checks of the guest's page tables that trust no guest: `vm.verify`.

Three sources answer every translation: the agent (MmGetPhysicalAddress), the host's own walker
over guest physical memory, and QEMU's walker (HMP gva2gpa). CR0/CR3/CR4/EFER come from QEMU's
`info registers`, read with the vCPUs stopped so the tables cannot change under a walk; only the
PAT MSR, which QEMU's monitor does not show, comes from the guest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.oracle.memory import MemoryAccessError, MonitorMemory, PhysicalMemory, RamLayout, SharedRamMemory
from harness.oracle.paging import SIZE_4K, MemoryType, PagingMode
from harness.oracle.walker import BatchResult, Snapshot, Walk, snapshot, translate_many, walk

if TYPE_CHECKING:
    from harness.vm import Vm


class VerificationError(AssertionError):
    """The guest's page tables are not what a test expected; the message shows the evidence."""


@dataclass(frozen=True)
class CpuState:
    cr0: int
    cr3: int
    cr4: int
    efer: int
    mode: PagingMode


def _show(pa: int | None) -> str:
    return "unmapped" if pa is None else f"{pa:#x}"


class Verifier:
    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        config = vm.config
        self.layout = RamLayout.for_machine(config.machine, config.memory_bytes)
        self.monitor_memory = MonitorMemory(vm.qemu, self.layout)
        path = vm.machine.shared_ram_path
        self.shared_memory = SharedRamMemory(path, self.layout) if path is not None else None
        self._pat: int | None = None
        self._gbpages: bool | None = None

    @property
    def memory(self) -> PhysicalMemory:
        """The fastest backend this VM has: shared RAM when QEMU runs here with it, else the monitor."""
        return self.shared_memory if self.shared_memory is not None else self.monitor_memory

    def close(self) -> None:
        if self.shared_memory is not None:
            # A caller may still hold a view; the mapping then goes when that does.
            with contextlib.suppress(MemoryAccessError):
                self.shared_memory.close()

    # -- CPU state ------------------------------------------------------------------------------

    @contextmanager
    def stopped(self) -> Iterator[CpuState]:
        """The vCPUs stopped, and their paging state as QEMU sees it."""
        if self._pat is None:
            self._pat = self._vm.mm.kernel_info().pat
            cpus = self._vm.qemu.command("query-cpus-fast")
            assert isinstance(cpus, list)
            self._gbpages = bool(self._vm.qemu.command("qom-get", path=cpus[0]["qom-path"], property="pdpe1gb"))
        with self._vm.qemu.stopped():
            regs = self._vm.qemu.registers()
            mode = PagingMode.from_registers(regs["CR0"], regs["CR4"], regs["EFER"], self._pat,
                                             gbpages=bool(self._gbpages))
            yield CpuState(regs["CR0"], regs["CR3"], regs["CR4"], regs["EFER"], mode)

    # -- translation ----------------------------------------------------------------------------

    def walk(self, va: int) -> Walk:
        with self.stopped() as cpu:
            return walk(self.memory, cpu.cr3, va, cpu.mode)

    def translate(self, va: int) -> int | None:
        """The physical address of `va`, asserted equal three ways (agent, host walk, QEMU)."""
        agent = self._vm.mm.MmGetPhysicalAddress(va)
        with self.stopped() as cpu:
            host = walk(self.memory, cpu.cr3, va, cpu.mode)
            qemu = self._vm.qemu.gva2gpa(va)
        # MmGetPhysicalAddress answers 0 for "no translation" (ddi-spec §3 [DECISION]).
        agent_pa = None if agent == 0 and host.pa != 0 else agent
        if agent_pa == host.pa == qemu:
            return host.pa
        raise VerificationError(
            f"translation of {va:#x} disagrees\n"
            f"  {'source':<28} answer\n"
            f"  {'agent MmGetPhysicalAddress':<28} {_show(agent_pa)}\n"
            f"  {'host walk':<28} {_show(host.pa)}\n"
            f"  {'QEMU gva2gpa':<28} {_show(qemu)}\n"
            f"host walk:\n{host.describe()}"
        )

    def translate_many(self, vas: Sequence[int]) -> BatchResult:
        """The host walker's translation of many VAs in one stopped window (no agent, no QEMU walk)."""
        with self.stopped() as cpu:
            return translate_many(self.memory, cpu.cr3, vas, cpu.mode, with_attributes=True)

    def cross_check_with_qemu(self, vas: Iterable[int]) -> int:
        """Assert the host walker equals gva2gpa on every VA; returns how many were checked."""
        vas = list(vas)
        with self.stopped() as cpu:
            result = translate_many(self.memory, cpu.cr3, vas, cpu.mode)
            disagreements = []
            for va, pa, ok in zip(vas, result.pa.tolist(), result.ok.tolist(), strict=True):
                qemu = self._vm.qemu.gva2gpa(va)
                host = int(pa) if ok else None
                if host != qemu:
                    disagreements.append(f"  {va:#018x}  host {_show(host):>18}  QEMU {_show(qemu):>18}")
        if disagreements:
            raise VerificationError(f"host walker and gva2gpa disagree on {len(disagreements)} of {len(vas)} "
                                    "addresses:\n" + "\n".join(disagreements[:20]))
        return len(vas)

    # -- mapping state --------------------------------------------------------------------------

    def assert_mapped(self, va: int, length: int, *, pfns: Sequence[int] | None = None,
                      writable: bool | None = None, user: bool | None = None, executable: bool | None = None,
                      cache: MemoryType | None = None) -> list[Walk]:
        """Every 4 KiB page of [va, va+length) is mapped, with these PFNs and attributes where given."""
        first, last = va & ~(SIZE_4K - 1), (va + length - 1) & ~(SIZE_4K - 1)
        pages = range(first, last + SIZE_4K, SIZE_4K)
        if pfns is not None and len(pfns) != len(pages):
            raise ValueError(f"{len(pfns)} PFNs given for {len(pages)} pages")
        with self.stopped() as cpu:
            walks = [walk(self.memory, cpu.cr3, page, cpu.mode) for page in pages]
        problems = []
        for index, w in enumerate(walks):
            if not w.ok or w.attributes is None or w.pa is None:
                problems.append(f"{w.va:#x}: not mapped ({w.stop.name} at level {w.level})")
                continue
            a = w.attributes
            wanted = {"writable": writable, "user": user, "executable": executable}
            got = {"writable": a.writable, "user": a.user, "executable": a.executable}
            for name, want in wanted.items():
                if want is not None and got[name] != want:
                    problems.append(f"{w.va:#x}: {name} is {got[name]}, expected {want}")
            if cache is not None and a.memory_type != cache:
                problems.append(f"{w.va:#x}: memory type {a.memory_type.label}, expected {cache.label}")
            if pfns is not None and w.pa >> 12 != pfns[index]:
                problems.append(f"{w.va:#x}: PFN {w.pa >> 12:#x}, expected {pfns[index]:#x}")
        if problems:
            raise VerificationError(f"[{va:#x}, +{length:#x}) is not mapped as expected:\n  " + "\n  ".join(problems)
                                    + "\n" + "\n".join(w.describe() for w in walks[:4]))
        return walks

    def assert_unmapped(self, va: int, length: int) -> None:
        """No page of [va, va+length) translates, by the host walk and by QEMU's."""
        first, last = va & ~(SIZE_4K - 1), (va + length - 1) & ~(SIZE_4K - 1)
        pages = list(range(first, last + SIZE_4K, SIZE_4K))
        with self.stopped() as cpu:
            result = translate_many(self.memory, cpu.cr3, pages, cpu.mode)
            still = [p for p, ok in zip(pages, result.ok.tolist(), strict=True) if ok]
            qemu_still = [p for p in pages[:64] if self._vm.qemu.gva2gpa(p) is not None]
        if still or qemu_still:
            raise VerificationError(f"[{va:#x}, +{length:#x}) is still mapped: host walk sees "
                                    f"{[hex(p) for p in still[:8]]}, QEMU sees {[hex(p) for p in qemu_still[:8]]}")

    # -- content --------------------------------------------------------------------------------

    def round_trip(self, va: int, length: int, seed: int = 1) -> None:
        """Guest writes through the VA and the host reads the PA; the host plants at the PA (shared
        RAM only) and the guest reads through the VA. Both directions must see the same bytes."""
        rng = np.random.default_rng(seed)
        pattern = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        self._vm.mm.write_va(va, pattern)
        pas = [self.translate(va + off) for off in range(0, length, SIZE_4K)]
        seen = b"".join(self._read_virtual_range(va, length))
        if seen != pattern:
            raise VerificationError(f"host reads back different bytes than the guest wrote at {va:#x} "
                                    f"(first PA {_show(pas[0])})")
        if self.shared_memory is None:
            return
        planted = bytes(reversed(pattern))
        with self.stopped() as cpu:
            for offset, chunk in self._chunks(va, planted):
                pa = walk(self.memory, cpu.cr3, va + offset, cpu.mode).pa
                assert pa is not None
                self.shared_memory.write(pa, chunk)
        if self._vm.mm.read_va(va, length) != planted:
            raise VerificationError(f"the guest does not read through {va:#x} what the host planted at its PA")

    @staticmethod
    def _chunks(va: int, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Split data at page boundaries of va: (offset, bytes) per page."""
        offset = 0
        while offset < len(data):
            room = SIZE_4K - ((va + offset) & (SIZE_4K - 1))
            yield offset, data[offset : offset + room]
            offset += room

    def _read_virtual_range(self, va: int, length: int) -> Iterator[bytes]:
        with self.stopped() as cpu:
            for offset, chunk in self._chunks(va, bytes(length)):
                pa = walk(self.memory, cpu.cr3, va + offset, cpu.mode).pa
                if pa is None:
                    raise VerificationError(f"{va + offset:#x} has no translation")
                yield self.memory.read(pa, len(chunk))

    # -- whole address space --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.stopped() as cpu:
            return snapshot(self.memory, cpu.cr3, cpu.mode)

    def page_table_dump(self) -> str:
        return self.snapshot().format()
