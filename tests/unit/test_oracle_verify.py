"""Unit tests of harness.verify against a fake VM: hand-built tables in a memfd, a fake QMP (no QEMU)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InfrastructureError
from harness.monitor import parse_gva2gpa
from harness.oracle.memory import BufferMemory, DirectoryScratch, RamLayout, SharedRamMemory
from harness.oracle.paging import PAT_GUEST, PTE_G, PTE_P, SIZE_2M, SIZE_4K, PagingMode
from harness.oracle.synth import KERNEL_RW, PageTableBuilder, SyntheticSpace
from harness.oracle.walker import walk
from harness.verify import VerificationError, Verifier, machine_size_option, parse_registers

MiB = 1 << 20
RAM = 32 * MiB
POOL_VA = 0xFFFFFA8040000000
KERNEL_VA = 0xFFFFF80000000000
PHYSMAP_VA = 0xFFFF880000000000

REGISTERS = (
    "\r\nCPU#{index}\r\nRAX=0000000000000000 RBX=0000000000000000\r\n"
    "RIP=fffff80000203180 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n"
    "CR0={cr0:08x} CR2=0000000000000000 CR3={cr3:016x} CR4={cr4:08x}\r\n"
    "DR6=00000000ffff0ff0 DR7=0000000000000400\r\nEFER={efer:016x}\r\nFCW=037f FSW=0000\r\n"
)
LONG_MODE = {"cr0": 0x80010011, "cr4": 0x003000A0, "efer": 0xD00}
CR4_SMEP = 1 << 20
NOT_STARTED = {"cr0": 0x60000010, "cr3": 0, "cr4": 0, "efer": 0}  # an AP still waiting for its SIPI


@dataclass
class FakeConfig:
    name: str = "fake"
    machine: str = "microvm"
    memory_bytes: int = RAM
    smp: int = 1


@dataclass
class FakeInfo:
    pat: int = PAT_GUEST


class FakeQmp:
    """Answers the QMP and HMP commands harness.verify sends, from the fake guest's RAM."""

    def __init__(self, vm: FakeVm) -> None:
        self.vm = vm
        self.running = True
        self.log: list[str] = []
        self.broken = False

    def command(self, name: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> object:
        args = arguments or {}
        if self.broken:
            raise InfrastructureError("fake: QMP stop got no answer within 3 s")
        line = args.get("command-line") if name == "human-monitor-command" else None
        self.log.append(line or name)
        if name == "query-status":
            return {"running": self.running, "status": "running" if self.running else "paused"}
        if name in ("stop", "cont"):
            self.running = name == "cont"
            return {}
        if name == "query-cpus-fast":
            return [{"cpu-index": i, "qom-path": f"/machine/cpu[{i}]"} for i in range(self.vm.config.smp)]
        if name == "qom-get":
            return {"pdpe1gb": True, "phys-bits": 40}[args["property"]]
        if name == "pmemsave":
            Path(args["filename"]).write_bytes(self.vm.ram.read(args["val"], args["size"]))
            return {}
        if name == "human-monitor-command":
            return self.hmp(str(line), int(args.get("cpu-index", 0)))
        raise AssertionError(f"unexpected QMP command {name}")

    def hmp(self, line: str, cpu: int = 0) -> str:
        if line == "info registers -a":
            return "".join(REGISTERS.format(index=i, **regs) for i, regs in enumerate(self.vm.cpu_registers))
        if m := re.fullmatch(r"gva2gpa (0x[0-9a-f]+)", line):
            pa = self.vm.qemu_translation(int(m.group(1), 16), cpu)
            return "Unmapped\r\n" if pa is None else f"gpa: {pa:#x}\r\n"
        if m := re.fullmatch(r"xp /(\d+)xg (0x[0-9a-f]+)", line):
            count, addr = int(m.group(1)), int(m.group(2), 16)
            return "".join(f"{addr + 8 * i:016x}: 0x{self.vm.ram.read_u64(addr + 8 * i):016x}\r\n"
                           for i in range(count))
        raise AssertionError(f"unexpected HMP command {line!r}")


class FakeMonitor:
    """What MonitorMemory needs (vm.qemu)."""

    def __init__(self, qmp: FakeQmp, scratch_dir: Path) -> None:
        self.qmp = qmp
        self.scratch_dir = scratch_dir
        self.scratch = DirectoryScratch(scratch_dir)

    def hmp(self, command_line: str) -> str:
        return self.qmp.hmp(command_line)

    def command(self, name: str, **arguments: object) -> object:
        return self.qmp.command(name, dict(arguments))


@dataclass
class FakeMachine:
    qmp: FakeQmp | None
    shared_ram_fd: int | None
    running: bool = True
    exit_status: int | None = None
    remote_ram: None = None


class FakeMm:
    def __init__(self, vm: FakeVm) -> None:
        self.vm = vm

    def kernel_info(self) -> FakeInfo:
        return FakeInfo()

    def MmGetPhysicalAddress(self, va: int) -> int:
        if va in self.vm.agent_lies:
            return self.vm.agent_lies[va]
        pa = self.vm.qemu_translation(va)
        return 0 if pa is None else pa

    def _pieces(self, va: int, length: int) -> list[tuple[int, int, int]]:
        """(offset, pa, size) per page touched, as the guest's own loads and stores would go."""
        out, offset = [], 0
        while offset < length:
            size = min(SIZE_4K - ((va + offset) & (SIZE_4K - 1)), length - offset)
            pa = self.vm.qemu_translation(va + offset)
            assert pa is not None
            out.append((offset, pa, size))
            offset += size
        return out

    def read_va(self, va: int, length: int) -> bytes:
        return b"".join(self.vm.ram.read(pa, size) for _, pa, size in self._pieces(va, length))

    def write_va(self, va: int, data: bytes) -> int:
        for offset, pa, size in self._pieces(va, len(data)):
            self.vm.ram.write(pa, data[offset : offset + size])
        return len(data)


@dataclass
class FakeVm:
    space: SyntheticSpace
    ram: SharedRamMemory
    fd: int
    scratch: Path
    config: FakeConfig = field(default_factory=FakeConfig)
    crash: Any = None
    agent_lies: dict[int, int] = field(default_factory=dict)
    qemu_lies: dict[int, int | None] = field(default_factory=dict)
    qemu_lies_on_cpu: dict[tuple[int, int], int | None] = field(default_factory=dict)  # (vCPU, VA)
    vcpus: int = 1  # what the kernel brought up (its hello)
    memory_map: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, RAM, 1)])

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.qmp = FakeQmp(self)
        self.qemu = FakeMonitor(self.qmp, self.scratch)
        self.machine = FakeMachine(self.qmp, self.fd)
        self.mm = FakeMm(self)
        self.cpu_registers: list[dict[str, int]] = [{**LONG_MODE, "cr3": self.space.cr3}]

    def qemu_translation(self, va: int, cpu: int = 0) -> int | None:
        if (cpu, va) in self.qemu_lies_on_cpu:
            return self.qemu_lies_on_cpu[cpu, va]
        if va in self.qemu_lies:
            return self.qemu_lies[va]
        return walk(self.ram, self.space.cr3, va, self.space.mode).pa


def small_space() -> SyntheticSpace:
    """A kernel-like address space in 32 MiB: text RX, data RW NX, a pool on scattered descending frames,
    a physmap in 2 MiB leaves, the self-map."""
    memory = BufferMemory(RAM)
    b = PageTableBuilder(memory, 4, 1 * MiB, 2 * MiB)
    b.map_range(KERNEL_VA, 0x200000, 16 * SIZE_4K, flags=PTE_P | PTE_G)
    b.map_range(KERNEL_VA + (2 << 20), 0x400000, 64 * SIZE_4K, flags=KERNEL_RW)
    for i in range(256):
        b.map(POOL_VA + i * SIZE_4K, (0x1F00 - 2 * i) * SIZE_4K, flags=KERNEL_RW)
    b.map_range(PHYSMAP_VA, 0, RAM, size=SIZE_2M, flags=KERNEL_RW)
    b.add_self_map()
    regions = [(KERNEL_VA, 16 * SIZE_4K, "text"), (KERNEL_VA + (2 << 20), 64 * SIZE_4K, "data"),
               (POOL_VA, 256 * SIZE_4K, "pool"), (PHYSMAP_VA, RAM, "physmap")]
    return SyntheticSpace(memory, b.cr3, PagingMode(levels=4, nxe=True), regions, b)


@pytest.fixture
def fake_vm(tmp_path: Path) -> Any:
    space = small_space()
    fd = os.memfd_create("fake-guest-ram")
    os.ftruncate(fd, RAM)
    os.pwrite(fd, bytes(space.memory.buffer), 0)
    ram = SharedRamMemory(fd, RamLayout.identity(RAM))
    vm = FakeVm(space, ram, fd, tmp_path)
    yield vm
    ram.close()
    os.close(fd)


def verifier(vm: FakeVm) -> Verifier:
    return Verifier(vm)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Parsers


def test_parse_registers_per_vcpu() -> None:
    text = REGISTERS.format(index=0, cr3=0x1000, **LONG_MODE) + REGISTERS.format(index=1, **NOT_STARTED)
    regs = parse_registers(text)
    assert sorted(regs) == [0, 1]
    assert regs[0]["CR3"] == 0x1000 and regs[0]["EFER"] == 0xD00 and regs[0]["RIP"] == 0xFFFFF80000203180
    assert regs[1]["CR0"] == 0x60000010
    plain = parse_registers("CR0=80010011 CR3=0000000000002000 CR4=000000a0\r\nEFER=0000000000000d00\r\n")
    assert plain == {0: {"CR0": 0x80010011, "CR3": 0x2000, "CR4": 0xA0, "EFER": 0xD00}}


def test_parse_gva2gpa() -> None:
    assert parse_gva2gpa("gpa: 0x1234\r\n") == 0x1234
    assert parse_gva2gpa("gpa: 0\r\n") == 0
    assert parse_gva2gpa("Unmapped\r\n") is None
    with pytest.raises(InfrastructureError, match="unexpected gva2gpa output"):
        parse_gva2gpa("Error: bad address")


# --------------------------------------------------------------------------------------------------
# Stopped windows and CPU state


def test_window_stops_reads_registers_and_resumes(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    with v.stopped() as w:
        assert not fake_vm.qmp.running
        assert w.cr3 == fake_vm.space.cr3 and w.mode.levels == 4 and w.mode.maxphyaddr == 40
        assert w.shared is v.shared_memory and w.memory is w.shared
        with v.stopped() as inner:
            assert inner is w
        assert not fake_vm.qmp.running
    assert fake_vm.qmp.running
    assert fake_vm.qmp.log.count("stop") == 1 and fake_vm.qmp.log.count("cont") == 1


def test_window_leaves_a_paused_guest_paused(fake_vm: FakeVm) -> None:
    fake_vm.qmp.running = False
    v = verifier(fake_vm)
    v.walk(KERNEL_VA)
    assert not fake_vm.qmp.running and "stop" not in fake_vm.qmp.log and "cont" not in fake_vm.qmp.log


def test_cpu_states_of_every_vcpu(fake_vm: FakeVm) -> None:
    fake_vm.config.smp = 2
    fake_vm.cpu_registers.append(NOT_STARTED)
    cpus = verifier(fake_vm).cpu_states()
    assert [c.index for c in cpus] == [0, 1]
    assert cpus[0].mode is not None and cpus[0].mode.gbpages
    assert cpus[1].mode is None and cpus[1].problem is not None and "paging is off" in cpus[1].problem
    assert "vCPU 1" in cpus[1].describe()
    with pytest.raises(VerificationError, match="not in long-mode paging"), verifier(fake_vm).stopped(1) as w:
        w.walk(KERNEL_VA)


def two_vcpus(fake_vm: FakeVm, cr3: int | None = None) -> None:
    """A second vCPU in long mode that the kernel brought up, on `cr3` (default: vCPU 0's)."""
    fake_vm.config.smp = fake_vm.vcpus = 2
    fake_vm.cpu_registers.append({**LONG_MODE, "cr3": fake_vm.space.cr3 if cr3 is None else cr3})


def test_vcpus_on_one_cr3_agree(fake_vm: FakeVm) -> None:
    two_vcpus(fake_vm)
    cpus = verifier(fake_vm).cpu_states()
    assert [c.cr3 for c in cpus] == [fake_vm.space.cr3] * 2


def test_vcpus_on_different_cr3s_fail_every_window_and_say_whether_the_kernel_half_is_shared(
        fake_vm: FakeVm) -> None:
    other = fake_vm.space.cr3 + SIZE_4K  # a table the synthetic space never filled: kernel half empty
    two_vcpus(fake_vm, cr3=other)
    with pytest.raises(VerificationError, match="different page tables") as caught:
        verifier(fake_vm).walk(KERNEL_VA)
    assert "kernel halves are NOT the same" in str(caught.value) and "vCPU 1" in str(caught.value)
    assert fake_vm.qmp.running, "the guest runs again after the failed check"


def test_vcpus_on_one_cr3_in_different_paging_modes_fail_the_window(fake_vm: FakeVm) -> None:
    two_vcpus(fake_vm)
    fake_vm.cpu_registers[1] = {**fake_vm.cpu_registers[1], "cr4": fake_vm.cpu_registers[1]["cr4"] ^ CR4_SMEP}
    with pytest.raises(VerificationError, match="walk in different modes") as caught:
        verifier(fake_vm).walk(KERNEL_VA)
    assert "vCPU 1 CR4=" in str(caught.value)


def test_a_vcpu_the_kernel_brought_up_but_not_in_long_mode_fails_the_window(fake_vm: FakeVm) -> None:
    fake_vm.config.smp = fake_vm.vcpus = 2
    fake_vm.cpu_registers.append(NOT_STARTED)
    with pytest.raises(VerificationError, match="brought up 2 CPUs, but only 1"):
        verifier(fake_vm).walk(KERNEL_VA)


def test_translate_asks_gva2gpa_on_every_vcpu(fake_vm: FakeVm) -> None:
    two_vcpus(fake_vm)
    v = verifier(fake_vm)
    assert v.translate(KERNEL_VA) == 0x200000
    fake_vm.qemu_lies_on_cpu[1, KERNEL_VA] = 0x999000
    with pytest.raises(VerificationError) as caught:
        v.translate(KERNEL_VA)
    text = str(caught.value)
    assert re.search(r"QEMU gva2gpa, vCPU 0\s+0x200000", text)
    assert re.search(r"QEMU gva2gpa, vCPU 1\s+0x999000", text)


def test_assert_unmapped_probes_go_round_the_vcpus(fake_vm: FakeVm) -> None:
    two_vcpus(fake_vm)
    unmapped = 0x7000_0000_0000
    fake_vm.qemu_lies_on_cpu[1, unmapped + SIZE_4K] = 0x5000  # only vCPU 1 is asked about the second page
    with pytest.raises(VerificationError, match="QEMU sees"):
        verifier(fake_vm).assert_unmapped(unmapped, 2 * SIZE_4K)


def test_window_after_a_crash_raises_the_crash(fake_vm: FakeVm) -> None:
    fake_vm.crash = RuntimeError("the guest stopped")
    with pytest.raises(RuntimeError, match="the guest stopped"):
        verifier(fake_vm).walk(KERNEL_VA)


# --------------------------------------------------------------------------------------------------
# Translation


def test_translate_three_ways(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    assert v.translate(KERNEL_VA + 0x123) == 0x200123
    assert v.translate(0x7000_0000_0000) is None  # unmapped: agent 0, host and QEMU none
    assert fake_vm.qmp.running


def test_translate_shows_a_disagreement_side_by_side(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    fake_vm.agent_lies[KERNEL_VA] = 0x999000
    with pytest.raises(VerificationError) as caught:
        v.translate(KERNEL_VA)
    text = str(caught.value)
    assert re.search(r"agent MmGetPhysicalAddress\s+0x999000", text)
    assert re.search(r"host walk\s+0x200000", text) and re.search(r"QEMU gva2gpa\s+0x200000", text)
    assert "PTE[" in text, "the host walk is shown"
    fake_vm.agent_lies.clear()
    fake_vm.qemu_lies[KERNEL_VA] = None
    with pytest.raises(VerificationError, match=r"QEMU gva2gpa\s+unmapped"):
        v.translate(KERNEL_VA)


def test_cross_check_reports_each_disagreement(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    vas = [int(x) for x in fake_vm.space.random_vas(50, seed=1).tolist()]
    assert v.cross_check_with_qemu(vas) == 50
    fake_vm.qemu_lies[vas[3]] = 0x5000
    with pytest.raises(VerificationError, match=r"disagree on 1 of 50") as caught:
        v.cross_check_with_qemu(vas)
    assert f"{vas[3]:#018x}" in str(caught.value)


def test_monitor_backend_window_reads_tables_once(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    vas = fake_vm.space.random_vas(5000, seed=2)
    with v.stopped() as w:
        shared = w.translate_many(vas, with_attributes=True)
        monitor = w.translate_many(vas, with_attributes=True, backend="monitor")
        assert shared.pa.tolist() == monitor.pa.tolist() and shared.stop.tolist() == monitor.stop.tolist()
        assert w.monitor.fetches < 100
        again = w.monitor.fetches
        w.translate_many(vas, backend="monitor")
        assert w.monitor.fetches == again, "a window's page cache serves the second batch"


# --------------------------------------------------------------------------------------------------
# Mapping state, content, A/D, leak check


def test_assert_mapped_and_unmapped(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    v.assert_mapped(KERNEL_VA, 2 * SIZE_4K, writable=False, executable=True, user=False, pfns=[0x200, 0x201])
    with pytest.raises(VerificationError, match=r"executable is True, expected False"):
        v.assert_mapped(KERNEL_VA, SIZE_4K, executable=False)
    with pytest.raises(VerificationError, match=r"PFN 0x200, expected 0x300"):
        v.assert_mapped(KERNEL_VA, SIZE_4K, pfns=[0x300])
    with pytest.raises(ValueError):
        v.assert_mapped(KERNEL_VA, 0)
    v.assert_unmapped(0x7000_0000_0000, 64 * MiB)
    with pytest.raises(VerificationError, match="still mapped"):
        v.assert_unmapped(KERNEL_VA - SIZE_4K, 2 * SIZE_4K)


def test_round_trip_both_directions(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    assert v.round_trip(POOL_VA + 0xF00, 0x2200, seed=3) == ("guest->host", "host->guest")


def test_accessed_dirty_clear_and_check(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    v.assert_accessed_dirty(POOL_VA, 2 * SIZE_4K, accessed=False, dirty=False)  # synth sets neither
    (entry_pa, entry), = v.leaf_entries(POOL_VA)
    fake_vm.ram.write_u64(entry_pa, entry | 0x60)
    v.assert_accessed_dirty(POOL_VA, accessed=True, dirty=True)
    with pytest.raises(VerificationError, match="D=1, expected 0"):
        v.assert_accessed_dirty(POOL_VA, dirty=False)
    v.clear_accessed_dirty(POOL_VA)
    v.assert_accessed_dirty(POOL_VA, accessed=False, dirty=False)
    assert fake_vm.ram.read_u64(entry_pa) == entry


def test_leak_check(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    spare_va, spare_pa = 0xFFFFF8B000000000, 0x1F01000
    builder = fake_vm.space.builder

    def map_spare() -> None:
        epa = builder.entry_pa(spare_va, 1)  # builds tables in the synthetic buffer: copy them over
        fake_vm.ram.write(0, bytes(fake_vm.space.memory.buffer))
        fake_vm.ram.write_u64(epa, spare_pa | 0x3)

    with v.leak_check():
        pass
    with pytest.raises(VerificationError, match=r"1 mapping.s. added and 0 changed") as caught, v.leak_check():
        map_spare()
    assert f"+ {spare_va:#018x}" in str(caught.value)
    before = v.snapshot()
    fake_vm.ram.write_u64(builder.entry_pa(spare_va, 1), 0)
    v.assert_released(before)  # removing a mapping is fine
    before = v.snapshot()
    map_spare()
    v.assert_released(before, allow=[(spare_va, SIZE_4K)])


# --------------------------------------------------------------------------------------------------
# Dumps never raise


def test_page_table_dump_is_compact_and_bounded(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    dump = v.page_table_dump()
    assert "Self-map: PML4[0x1ed]" in dump
    assert re.search(rf"{POOL_VA:#018x}-0xfffffa8040100000  256 PA runs in 0x1d02000-0x1f01000 ", dump), dump
    assert len(dump.splitlines()) < 15
    assert "IA32_PAT not read from the guest" in dump, "the dump never asks the agent"
    assert "not shown" in v.page_table_dump(max_ranges=2)
    assert fake_vm.qmp.running


def test_page_table_dump_of_a_dead_or_wedged_vm_is_one_line(fake_vm: FakeVm) -> None:
    v = verifier(fake_vm)
    fake_vm.qmp.broken = True
    dump = v.page_table_dump()
    assert dump.startswith("page-table dump unavailable: InfrastructureError") and "\n" not in dump
    fake_vm.machine.running, fake_vm.machine.exit_status = False, -9
    assert v.page_table_dump() == "no page-table dump: QEMU is not running (exit status -9)"
    fake_vm.crash = RuntimeError("reset")
    assert v.page_table_dump() == "no page-table dump: the guest stopped (RuntimeError)"


def test_wrong_ram_layout_is_refused(fake_vm: FakeVm) -> None:
    fake_vm.memory_map = [(0, 64 * MiB, 1)]
    v = verifier(fake_vm)
    assert v.layout_problems
    with pytest.raises(InfrastructureError, match="RAM layout is wrong"):
        v.walk(KERNEL_VA)
    assert v.page_table_dump().startswith("page-table dump unavailable")


def test_machine_size_option() -> None:
    assert machine_size_option("q35,max-ram-below-4g=2G", "max-ram-below-4g") == 2 << 30
    assert machine_size_option("pc,accel=tcg,max-ram-below-4g=1536M", "max-ram-below-4g") == 1536 << 20
    assert machine_size_option("pc,max-ram-below-4g=1073741824", "max-ram-below-4g") == 1 << 30
    assert machine_size_option("microvm", "max-ram-below-4g") is None
    with pytest.raises(ValueError, match="not a size"):
        machine_size_option("q35,max-ram-below-4g=lots", "max-ram-below-4g")


def test_layout_follows_max_ram_below_4g(fake_vm: FakeVm) -> None:
    fake_vm.config.machine = "q35,max-ram-below-4g=16M"
    v = verifier(fake_vm)
    assert [(r.gpa_start, r.size) for r in v.layout.regions] == [(0, 16 * MiB), (4 << 30, 16 * MiB)]
    assert v.layout_problems, "the fake's memory map says 32 MiB low: the check catches the mismatch"
