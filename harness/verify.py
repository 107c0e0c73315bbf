"""Checks of the guest's page tables that trust no guest: `vm.verify`.

Three sources answer every translation: the agent (MmGetPhysicalAddress), the host's own walker
over guest physical memory, and QEMU's walker (HMP gva2gpa, on every vCPU). CR0/CR3/CR4/EFER of every
vCPU come from QEMU's `info registers`, read with the vCPUs stopped so the tables cannot change under
a walk; MAXPHYADDR and 1 GiB-page support come from the vCPU's QOM properties; only the PAT MSR, which
QEMU's monitor does not show, comes from the guest.

On an SMP guest every stopped window also checks that the vCPUs agree: as many are in long-mode
paging as the kernel brought up, and all of them run on one CR3 (the kernel has one address space)
in one paging mode (same CR4), so one walk answers for every vCPU.

Guest physical memory is read through the shared RAM backend when QEMU runs on this host with one
(`vm.machine.shared_ram_fd`), through SFTP from the RAM file when QEMU runs on a remote host
(`vm.machine.remote_ram`), else through the monitor; all that exist are at hand in a stopped window:

    with vm.verify.stopped() as w:            # vCPUs stopped; w.cpu is vCPU 0's state
        w.walk(va)                            # host walk over the fastest backend
        w.monitor.read(pa, 4096)              # the same RAM through QMP pmemsave / HMP xp
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from harness.errors import BugCheck, InfrastructureError
from harness.monitor import parse_gva2gpa
from harness.oracle.memory import (
    MemoryAccessError,
    MonitorMemory,
    PageCache,
    PhysicalMemory,
    RamLayout,
    RemoteRamMemory,
    SharedRamMemory,
)
from harness.oracle.paging import (
    MAXPHYADDR,
    PAT_GUEST,
    PTE_A,
    PTE_D,
    SIZE_4K,
    MemoryType,
    PagingMode,
    PagingModeError,
)
from harness.oracle.walker import (
    BatchResult,
    SelfMapCheck,
    Snapshot,
    SnapshotDiff,
    Walk,
    check_self_map,
    snapshot,
    translate_many,
    walk,
)

if TYPE_CHECKING:
    from harness.config import VmConfig
    from harness.vm import Vm

_REGISTER = re.compile(r"\b(CR0|CR2|CR3|CR4|EFER|RIP|RSP)=([0-9a-fA-F]+)")
PAGE_FRAME = 0x000F_FFFF_FFFF_F000  # CR3's table address bits
_CPU_HEADER = re.compile(r"^CPU#(\d+)\s*$", re.MULTILINE)

AGENT_CHUNK = 4096  # read_va / write_va carry at most this many bytes (docs/agent-protocol.md)
QMP_TIMEOUT = 10.0
DUMP_QMP_TIMEOUT = 3.0  # a report must not hang on a wedged QEMU


class VerificationError(AssertionError):
    """The guest's page tables are not what a test expected; the message shows the evidence."""


@dataclass(frozen=True)
class CpuState:
    """One vCPU's paging registers as QEMU's `info registers` shows them (read while stopped).

    ``mode`` is None when the vCPU is not in 4- or 5-level long-mode paging (``problem`` says why),
    e.g. an application processor the kernel never started.
    """

    index: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    mode: PagingMode | None
    problem: str | None = None

    def describe(self) -> str:
        text = f"vCPU {self.index}: CR0={self.cr0:#x} CR3={self.cr3:#x} CR4={self.cr4:#x} EFER={self.efer:#x}"
        return text + (f", {self.mode.describe()}" if self.mode else f" ({self.problem})")


@dataclass
class Window:
    """The guest stopped: the vCPUs' paging state, and guest RAM that cannot change until the window ends.

    ``memory`` is the fastest backend: ``shared`` when there is one, else ``remote`` (the RAM file on a
    remote QEMU host, read by SFTP), else ``monitor``. ``remote`` and ``monitor`` sit behind page caches
    that live as long as the window, so each window reads guest RAM afresh.
    """

    cpu: CpuState  # the vCPU whose CR3 the walks start from
    cpus: tuple[CpuState, ...]
    shared: SharedRamMemory | None
    monitor: PageCache
    remote: PageCache | None = None
    memory: PhysicalMemory = field(init=False)

    def __post_init__(self) -> None:
        self.memory = self.shared or self.remote or self.monitor

    @property
    def cr3(self) -> int:
        return self.cpu.cr3

    @property
    def mode(self) -> PagingMode:
        if self.cpu.mode is None:
            raise VerificationError(f"vCPU {self.cpu.index} is not in long-mode paging: {self.cpu.problem}")
        return self.cpu.mode

    def backend(self, name: str | None = None) -> PhysicalMemory:
        """``"shared"``, ``"remote"``, ``"monitor"``, or None for the fastest."""
        if name is None:
            return self.memory
        if name == "monitor":
            return self.monitor
        if name == "shared":
            if self.shared is None:
                raise VerificationError("this VM has no shared RAM backend (QEMU does not run here with one)")
            return self.shared
        if name == "remote":
            if self.remote is None:
                raise VerificationError("this VM has no remote RAM file (QEMU does not run on a remote host with one)")
            return self.remote
        raise ValueError(f"backend must be 'shared', 'remote', 'monitor' or None, not {name!r}")

    def walk(self, va: int, backend: str | None = None) -> Walk:
        return walk(self.backend(backend), self.cr3, va, self.mode)

    def translate_many(self, vas: Sequence[int] | npt.ArrayLike, *, with_attributes: bool = False,
                       backend: str | None = None) -> BatchResult:
        return translate_many(self.backend(backend), self.cr3, vas, self.mode, with_attributes=with_attributes)

    def snapshot(self, backend: str | None = None) -> Snapshot:
        return snapshot(self.backend(backend), self.cr3, self.mode)


@dataclass(frozen=True)
class _CpuFacts:
    """What the paging mode needs beyond CR0/CR4/EFER, read once per VM."""

    pat: int
    pat_from_guest: bool
    maxphyaddr: int
    gbpages: bool
    cpu_count: int


def _show(pa: int | None) -> str:
    return "unmapped" if pa is None else f"{pa:#x}"


def _pages(va: int, length: int) -> list[int]:
    if length <= 0:
        raise ValueError(f"length must be positive, not {length}")
    first, last = va & ~(SIZE_4K - 1), (va + length - 1) & ~(SIZE_4K - 1)
    return list(range(first, last + SIZE_4K, SIZE_4K))


def _chunks(va: int, length: int) -> Iterator[tuple[int, int]]:
    """(offset, size) pieces of [va, va+length) that do not cross a 4 KiB page boundary."""
    offset = 0
    while offset < length:
        size = min(SIZE_4K - ((va + offset) & (SIZE_4K - 1)), length - offset)
        yield offset, size
        offset += size


_SIZE_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def machine_size_option(machine: str, key: str) -> int | None:
    """A size property of a `-machine` string (``q35,max-ram-below-4g=2G`` → 2 GiB), QEMU's suffixes."""
    for option in machine.split(",")[1:]:
        name, _, value = option.partition("=")
        if name.strip() == key:
            m = re.fullmatch(r"\s*(\d+)\s*([bkmgtBKMGT]?)\s*", value)
            if m is None:
                raise ValueError(f"-machine {key}={value!r} is not a size")
            return int(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()]
    return None


def parse_registers(text: str) -> dict[int, dict[str, int]]:
    """{vCPU index: {register: value}} from `info registers -a` (or plain `info registers`: vCPU 0)."""
    headers = list(_CPU_HEADER.finditer(text))
    if not headers:
        return {0: {name: int(value, 16) for name, value in _REGISTER.findall(text)}}
    out: dict[int, dict[str, int]] = {}
    for k, m in enumerate(headers):
        end = headers[k + 1].start() if k + 1 < len(headers) else len(text)
        out[int(m.group(1))] = {name: int(value, 16) for name, value in _REGISTER.findall(text[m.end() : end])}
    return out


def ram_layout(config: VmConfig) -> RamLayout:
    """Where each guest-physical RAM range lies in the VM's RAM backend file."""
    return RamLayout.for_machine(config.machine, config.memory_bytes,
                                 machine_size_option(config.machine, "max-ram-below-4g"))


class Verifier:
    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self.layout = ram_layout(vm.config)
        self.layout_problems = self._check_layout(vm.memory_map)
        self.monitor_memory = MonitorMemory(vm.qemu, self.layout, scratch=vm.qemu.scratch)
        fd = vm.machine.shared_ram_fd
        self.shared_memory = SharedRamMemory(fd, self.layout) if fd is not None else None
        remote = vm.machine.remote_ram
        self.remote_memory = RemoteRamMemory(remote, self.layout) if remote is not None else None
        self._facts: _CpuFacts | None = None
        self._window: Window | None = None
        self.last_cpu: CpuState | None = None  # vCPU 0 as last seen stopped (for post-mortem dumps)

    @property
    def memory(self) -> PhysicalMemory:
        """The fastest backend this VM has: shared RAM when QEMU runs here with it, else its RAM file on
        the remote host, else the monitor.

        Outside a stopped window the guest runs: stop it (`stopped()`) around multi-step reads.
        """
        return self.shared_memory or self.remote_memory or self.monitor_memory

    def close(self) -> None:
        if self.shared_memory is not None:
            # A caller may still hold a view; the mapping then goes when that does.
            with contextlib.suppress(MemoryAccessError):
                self.shared_memory.close()

    def _check_layout(self, memory_map: Sequence[tuple[int, int, int]]) -> list[str]:
        """Every RAM range of the guest's e820 map must be where the layout says RAM is."""
        return [f"e820 RAM [{base:#x}, +{size:#x}) is not inside the RAM layout {self.layout.describe()}"
                for base, size, kind in memory_map if kind == 1 and not self.layout.contains(base, size)]

    # -- QEMU -----------------------------------------------------------------------------------

    def _qmp(self, name: str, arguments: dict[str, object] | None = None, timeout: float = QMP_TIMEOUT) -> object:
        qmp = self._vm.machine.qmp
        if qmp is None:
            raise InfrastructureError(f"{self._vm.name}: QMP is not connected")
        return qmp.command(name, arguments, timeout)

    def _hmp(self, command_line: str, cpu: int = 0, timeout: float = QMP_TIMEOUT) -> str:
        # cpu-index, not HMP `cpu N`: each human-monitor-command runs in a fresh HMP session, so a
        # `cpu N` sent in an earlier command is forgotten by the next one.
        output = self._qmp("human-monitor-command", {"command-line": command_line, "cpu-index": cpu}, timeout)
        if not isinstance(output, str):
            raise InfrastructureError(f"{self._vm.name}: HMP {command_line!r} returned {output!r}")
        return output

    def gva2gpa(self, va: int, cpu: int = 0) -> int | None:
        """QEMU's own translation of ``va`` on vCPU ``cpu`` (None where QEMU reports it unmapped)."""
        return parse_gva2gpa(self._hmp(f"gva2gpa {va & 0xFFFFFFFFFFFFFFFF:#x}", cpu))

    def _cpu_facts(self, *, ask_guest: bool = True, timeout: float = QMP_TIMEOUT) -> _CpuFacts:
        if self._facts is not None and (self._facts.pat_from_guest or not ask_guest):
            return self._facts
        pat, from_guest = PAT_GUEST, False
        if ask_guest:
            pat, from_guest = self._vm.mm.kernel_info().pat, True
        cpus = self._qmp("query-cpus-fast", timeout=timeout)
        if not isinstance(cpus, list) or not cpus:
            raise InfrastructureError(f"{self._vm.name}: query-cpus-fast returned {cpus!r}")
        path = cpus[0]["qom-path"]
        gbpages = bool(self._qmp("qom-get", {"path": path, "property": "pdpe1gb"}, timeout))
        bits = self._qmp("qom-get", {"path": path, "property": "phys-bits"}, timeout)
        maxphyaddr = bits if isinstance(bits, int) and 32 <= bits <= MAXPHYADDR else MAXPHYADDR
        self._facts = _CpuFacts(pat, from_guest, maxphyaddr, gbpages, len(cpus))
        return self._facts

    def _read_cpus(self, facts: _CpuFacts, timeout: float = QMP_TIMEOUT) -> tuple[CpuState, ...]:
        per_cpu = parse_registers(self._hmp("info registers -a", timeout=timeout))
        states = []
        for index in sorted(per_cpu):
            regs = per_cpu[index]
            missing = {"CR0", "CR3", "CR4", "EFER"} - regs.keys()
            if missing:
                raise InfrastructureError(f"{self._vm.name}: info registers shows no {sorted(missing)} for "
                                          f"vCPU {index}")
            mode: PagingMode | None = None
            problem = None
            try:
                mode = PagingMode.from_registers(regs["CR0"], regs["CR4"], regs["EFER"], facts.pat,
                                                 maxphyaddr=facts.maxphyaddr, gbpages=facts.gbpages)
            except PagingModeError as exc:
                problem = str(exc)
            states.append(CpuState(index, regs["CR0"], regs["CR3"], regs["CR4"], regs["EFER"], mode, problem))
        return tuple(states)

    # -- stopped windows ------------------------------------------------------------------------

    def _require_alive(self) -> None:
        vm = self._vm
        if vm.crash is not None:
            raise vm.crash
        if not vm.machine.running:
            raise InfrastructureError(f"{vm.name}: QEMU is not running (exit status {vm.machine.exit_status})")
        if self.layout_problems:
            raise InfrastructureError(f"{vm.name}: the host's idea of the RAM layout is wrong: "
                                      + "; ".join(self.layout_problems))

    def _check_vcpus_agree(self, cpus: Sequence[CpuState], memory: PhysicalMemory) -> None:
        """The vCPUs the kernel brought up are all in long-mode paging, on one CR3, in one mode."""
        paging = [c for c in cpus if c.mode is not None]
        expected = self._vm.vcpus
        problems = []
        if len(paging) < expected:
            problems.append(f"the kernel brought up {expected} CPUs, but only {len(paging)} vCPU(s) are in "
                            f"long-mode paging")
        cr3s = sorted({c.cr3 for c in paging})
        if len(cr3s) > 1:
            problems.append("the vCPUs run on different page tables (the kernel has one address space); "
                            + self._kernel_half_note(cr3s, paging, memory))
        if len({(c.mode, c.cr4) for c in paging}) > 1:  # one walk answers for all only in one mode
            problems.append("the vCPUs walk in different modes: "
                            + ", ".join(f"vCPU {c.index} CR4={c.cr4:#x}" for c in paging))
        if problems:
            raise VerificationError("the vCPUs disagree: " + "; ".join(problems) + "\n  "
                                    + "\n  ".join(c.describe() for c in cpus))

    @staticmethod
    def _kernel_half_note(cr3s: Sequence[int], paging: Sequence[CpuState], memory: PhysicalMemory) -> str:
        """Whether the top-level tables of the CR3s at least share their kernel half (slots 256-511)."""
        try:
            halves = {cr3: memory.read((cr3 & PAGE_FRAME) + 256 * 8, 256 * 8) for cr3 in cr3s}
        except MemoryAccessError as exc:
            return f"their top-level tables cannot be read: {exc}"
        shared = len(set(halves.values())) == 1
        return "their kernel halves are " + ("the same" if shared else "NOT the same") + \
            f" (CR3s {[hex(c) for c in cr3s]} on vCPUs {[c.index for c in paging]})"

    @contextmanager
    def stopped(self, cpu: int = 0, *, ask_guest: bool = True, timeout: float = QMP_TIMEOUT,
                check_vcpus: bool = True) -> Iterator[Window]:
        """Stop the vCPUs (unless already stopped), read every vCPU's paging registers, check that the
        vCPUs agree (unless check_vcpus is False), yield a Window, then let the guest run again. Nested
        windows share the outer one's stop."""
        self._require_alive()
        if self._window is not None:
            if self._window.cpu.index != cpu:
                raise VerificationError("a nested stopped() window must use the outer window's vCPU")
            yield self._window  # the outer window stops and resumes the guest
            return
        facts = self._cpu_facts(ask_guest=ask_guest, timeout=timeout)  # may ask the agent: guest still running
        status = self._qmp("query-status", timeout=timeout)
        was_running = isinstance(status, dict) and bool(status.get("running"))  # else someone else paused it
        if was_running:
            self._qmp("stop", timeout=timeout)
        try:
            cpus = self._read_cpus(facts, timeout)
            chosen = next((c for c in cpus if c.index == cpu), None)
            if chosen is None:
                raise VerificationError(f"no vCPU {cpu}; QEMU shows {[c.index for c in cpus]}")
            self.last_cpu = next((c for c in cpus if c.index == 0), chosen)
            remote = PageCache(self.remote_memory) if self.remote_memory is not None else None
            self._window = Window(chosen, cpus, self.shared_memory, PageCache(self.monitor_memory), remote)
            if check_vcpus:
                self._check_vcpus_agree(cpus, self._window.memory)
            yield self._window
        except BaseException:
            self._window = None
            if was_running:  # resume, but let the first error be the one reported
                with contextlib.suppress(InfrastructureError):
                    self._qmp("cont", timeout=timeout)
            raise
        self._window = None
        if was_running:
            self._qmp("cont", timeout=timeout)

    def cpu_states(self) -> tuple[CpuState, ...]:
        """Every vCPU's CR0/CR3/CR4/EFER and paging mode, from QEMU with the guest stopped."""
        with self.stopped() as w:
            return w.cpus

    # -- translation ----------------------------------------------------------------------------

    def walk(self, va: int, *, cpu: int = 0, backend: str | None = None) -> Walk:
        with self.stopped(cpu) as w:
            return w.walk(va, backend)

    def translate(self, va: int) -> int | None:
        """The physical address of `va`, asserted equal three ways (agent, host walk, QEMU's gva2gpa on
        every vCPU the kernel runs)."""
        agent = self._vm.mm.MmGetPhysicalAddress(va)
        with self.stopped() as w:
            host = w.walk(va)
            qemu = {c.index: self.gva2gpa(va, c.index) for c in w.cpus if c.mode is not None}
        # MmGetPhysicalAddress answers 0 for "no translation" (ddi-spec §3 [DECISION]).
        agent_pa = None if agent == 0 and host.pa != 0 else agent
        if all(agent_pa == host.pa == pa for pa in qemu.values()):
            return host.pa
        def label(k: int) -> str:
            return "QEMU gva2gpa" if len(qemu) == 1 else f"QEMU gva2gpa, vCPU {k}"

        rows = "".join(f"  {label(k):<28} {_show(pa)}\n" for k, pa in qemu.items())
        raise VerificationError(
            f"translation of {va:#x} disagrees\n"
            f"  {'source':<28} answer\n"
            f"  {'agent MmGetPhysicalAddress':<28} {_show(agent_pa)}\n"
            f"  {'host walk':<28} {_show(host.pa)}\n"
            f"{rows}"
            f"host walk:\n{host.describe()}"
        )

    def translate_many(self, vas: Sequence[int] | npt.ArrayLike, *, backend: str | None = None) -> BatchResult:
        """The host walker's translation of many VAs in one stopped window (no agent, no QEMU walk)."""
        with self.stopped() as w:
            return w.translate_many(vas, with_attributes=True, backend=backend)

    def cross_check_with_qemu(self, vas: Iterable[int], *, cpu: int = 0) -> int:
        """Assert the host walker equals gva2gpa on every VA, all in one stopped window; returns how many
        were checked. Each gva2gpa is a monitor round trip (~1-2.5 ms): keep the count in the thousands."""
        vas = [int(v) & 0xFFFFFFFFFFFFFFFF for v in vas]
        disagreements: list[tuple[int, int | None, int | None]] = []
        first_walk = ""
        with self.stopped(cpu) as w:
            result = w.translate_many(vas)
            for va, pa, ok in zip(vas, result.pa.tolist(), result.ok.tolist(), strict=True):
                qemu = self.gva2gpa(va, cpu)
                host = int(pa) if ok else None
                if host != qemu:
                    disagreements.append((va, host, qemu))
            if disagreements:
                first_walk = w.walk(disagreements[0][0]).describe()
        if disagreements:
            rows = "\n".join(f"  {va:#018x}  {_show(h):>18}  {_show(q):>18}" for va, h, q in disagreements[:20])
            raise VerificationError(
                f"host walker and gva2gpa disagree on {len(disagreements)} of {len(vas)} addresses:\n"
                f"  {'VA':<18}  {'host walk':>18}  {'QEMU gva2gpa':>18}\n{rows}\n"
                f"host walk of the first:\n{first_walk}")
        return len(vas)

    # -- mapping state --------------------------------------------------------------------------

    def assert_mapped(self, va: int, length: int, *, pfns: Sequence[int] | None = None,
                      writable: bool | None = None, user: bool | None = None, executable: bool | None = None,
                      cache: MemoryType | None = None) -> list[Walk]:
        """Every 4 KiB page of [va, va+length) is mapped, with these PFNs and attributes where given.

        Returns the host walk of every page."""
        pages = _pages(va, length)
        if pfns is not None and len(pfns) != len(pages):
            raise ValueError(f"{len(pfns)} PFNs given for {len(pages)} pages")
        with self.stopped() as w:
            walks = [w.walk(page) for page in pages]
        problems = []
        for index, wk in enumerate(walks):
            if not wk.ok or wk.attributes is None or wk.pa is None:
                problems.append(f"{wk.va:#x}: not mapped ({wk.stop.name} at level {wk.level})")
                continue
            a = wk.attributes
            wanted = {"writable": writable, "user": user, "executable": executable}
            got = {"writable": a.writable, "user": a.user, "executable": a.executable}
            for name, want in wanted.items():
                if want is not None and got[name] != want:
                    problems.append(f"{wk.va:#x}: {name} is {got[name]}, expected {want}")
            if cache is not None and a.memory_type != cache:
                problems.append(f"{wk.va:#x}: memory type {a.memory_type.label}, expected {cache.label}")
            if pfns is not None and wk.pa >> 12 != pfns[index]:
                problems.append(f"{wk.va:#x}: PFN {wk.pa >> 12:#x}, expected {pfns[index]:#x}")
        if problems:
            shown = [wk for wk in walks if any(p.startswith(f"{wk.va:#x}:") for p in problems)][:4]
            raise VerificationError(f"[{va:#x}, +{length:#x}) is not mapped as expected:\n  "
                                    + "\n  ".join(problems[:40])
                                    + (f"\n  ... {len(problems) - 40} more" if len(problems) > 40 else "")
                                    + "\n" + "\n".join(wk.describe() for wk in shown))
        return walks

    def assert_unmapped(self, va: int, length: int, *, qemu_samples: int = 64) -> None:
        """No page of [va, va+length) translates by the host walk (every page) nor by QEMU's (up to
        ``qemu_samples`` pages spread over the range, first and last included)."""
        pages = _pages(va, length)
        if len(pages) <= qemu_samples:
            probes = pages
        else:
            probes = sorted({pages[round(k * (len(pages) - 1) / (qemu_samples - 1))] for k in range(qemu_samples)})
        with self.stopped() as w:
            result = w.translate_many(pages)
            still = [p for p, ok in zip(pages, result.ok.tolist(), strict=True) if ok]
            vcpus = [c.index for c in w.cpus if c.mode is not None] or [0]
            # The probes go round the vCPUs: each one's gva2gpa walks from its own CR3.
            qemu_still = [p for k, p in enumerate(probes) if self.gva2gpa(p, vcpus[k % len(vcpus)]) is not None]
            first = w.walk(still[0]).describe() if still else ""
        if still or qemu_still:
            raise VerificationError(f"[{va:#x}, +{length:#x}) is still mapped: host walk sees {len(still)} pages "
                                    f"{[hex(p) for p in still[:8]]}, QEMU sees {[hex(p) for p in qemu_still[:8]]}"
                                    + (f"\n{first}" if first else ""))

    def check_self_map(self) -> SelfMapCheck:
        """The recursive slot (0x1ED) as the host reads it from the top table CR3 points at."""
        with self.stopped() as w:
            return check_self_map(w.memory, w.cr3, w.mode)

    # -- accessed and dirty ---------------------------------------------------------------------

    def leaf_entries(self, va: int, length: int = 1) -> list[tuple[int, int]]:
        """(entry PA, raw leaf entry) of every page of [va, va+length), by the host walk."""
        with self.stopped() as w:
            out = []
            for page in _pages(va, length):
                wk = w.walk(page)
                if wk.leaf is None:
                    raise VerificationError(f"{page:#x} is not mapped:\n{wk.describe()}")
                out.append((wk.leaf.entry_pa, wk.leaf.entry))
            return out

    def clear_accessed_dirty(self, va: int, length: int = 1) -> None:
        """Clear A and D in the leaf entries of [va, va+length), writing guest RAM (shared or remote backend).

        Only meaningful where the vCPU holds no TLB entry for these pages (a fresh mapping the guest has
        not touched): a cached translation lets the guest read or write without the walk that sets A/D.
        A large leaf's A/D cover its whole 2 MiB or 1 GiB.
        """
        shared = self._require_shared("clear A/D bits")
        with self.stopped():
            for entry_pa, entry in self.leaf_entries(va, length):
                shared.write_u64(entry_pa, entry & ~(PTE_A | PTE_D))

    def assert_accessed_dirty(self, va: int, length: int = 1, *, accessed: bool | None = None,
                              dirty: bool | None = None) -> None:
        """The leaf of every page of [va, va+length) has A (and D) as given, by the host walk."""
        problems = []
        with self.stopped() as w:
            walks = [w.walk(page) for page in _pages(va, length)]
        for wk in walks:
            a = wk.attributes
            if a is None:
                problems.append(f"{wk.va:#x}: not mapped ({wk.stop.name})")
                continue
            if accessed is not None and a.accessed != accessed:
                problems.append(f"{wk.va:#x}: A={int(a.accessed)}, expected {int(accessed)}")
            if dirty is not None and a.dirty != dirty:
                problems.append(f"{wk.va:#x}: D={int(a.dirty)}, expected {int(dirty)}")
        if problems:
            raise VerificationError("accessed/dirty bits are not as expected:\n  " + "\n  ".join(problems)
                                    + "\n" + walks[0].describe())

    # -- content --------------------------------------------------------------------------------

    def _require_shared(self, what: str) -> SharedRamMemory | RemoteRamMemory:
        """A backend that writes guest RAM: the shared mapping, or the RAM file on a remote host."""
        writable = self.shared_memory or self.remote_memory
        if writable is None:
            raise VerificationError(f"cannot {what}: this VM has no shared RAM backend (the monitor is read-only)")
        return writable

    def guest_write(self, va: int, data: bytes) -> None:
        """The guest stores ``data`` through ``va`` (agent write_va, in pieces the protocol allows)."""
        for offset in range(0, len(data), AGENT_CHUNK):
            self._vm.mm.write_va(va + offset, data[offset : offset + AGENT_CHUNK])

    def guest_read(self, va: int, length: int) -> bytes:
        """What the guest loads through ``va`` (agent read_va, in pieces the protocol allows)."""
        return b"".join(self._vm.mm.read_va(va + offset, min(AGENT_CHUNK, length - offset))
                        for offset in range(0, length, AGENT_CHUNK))

    def host_read(self, va: int, length: int, *, backend: str | None = None) -> bytes:
        """What guest RAM holds behind [va, va+length), read by the host at the PAs of its own walk."""
        with self.stopped() as w:
            memory = w.backend(backend)
            pieces = []
            for offset, size in _chunks(va, length):
                wk = w.walk(va + offset)
                if wk.pa is None:
                    raise VerificationError(f"{va + offset:#x} has no translation:\n{wk.describe()}")
                pieces.append(memory.read(wk.pa, size))
            return b"".join(pieces)

    def host_write(self, va: int, data: bytes) -> list[int]:
        """Plant ``data`` in guest RAM at the PAs behind ``va`` (shared or remote backend); returns the PAs written."""
        shared = self._require_shared("plant bytes in guest RAM")
        written = []
        with self.stopped() as w:
            for offset, size in _chunks(va, len(data)):
                wk = w.walk(va + offset)
                if wk.pa is None:
                    raise VerificationError(f"{va + offset:#x} has no translation:\n{wk.describe()}")
                shared.write(wk.pa, data[offset : offset + size])
                written.append(wk.pa)
        return written

    def round_trip(self, va: int, length: int, seed: int = 1) -> tuple[str, ...]:
        """Guest writes through the VA and the host reads the PAs (through every backend it has); the host
        plants at the PAs (shared or remote RAM file) and the guest reads through the VA. Returns the directions
        checked: ("guest->host",) or ("guest->host", "host->guest")."""
        rng = np.random.default_rng(seed)
        pattern = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        self.guest_write(va, pattern)
        backends = ["monitor"] + (["shared"] if self.shared_memory is not None else []) \
            + (["remote"] if self.remote_memory is not None else [])
        for name in backends:
            seen = self.host_read(va, length, backend=name)
            if seen != pattern:
                bad = next(i for i in range(length) if seen[i] != pattern[i])
                raise VerificationError(f"the host ({name} backend) reads other bytes than the guest wrote at "
                                        f"{va:#x}: first difference at +{bad:#x}: {seen[bad]:#04x} != "
                                        f"{pattern[bad]:#04x}\n{self.walk(va + bad).describe()}")
        if self.shared_memory is None and self.remote_memory is None:
            return ("guest->host",)
        planted = bytes(b ^ 0xA5 for b in pattern)
        self.host_write(va, planted)
        seen = self.guest_read(va, length)
        if seen != planted:
            bad = next(i for i in range(length) if seen[i] != planted[i])
            raise VerificationError(f"the guest does not read through {va:#x} what the host planted at its PAs: "
                                    f"first difference at +{bad:#x}\n{self.walk(va + bad).describe()}")
        return ("guest->host", "host->guest")

    # -- whole address space --------------------------------------------------------------------

    def snapshot(self, *, cpu: int = 0, backend: str | None = None) -> Snapshot:
        """Every present leaf mapping reachable from the vCPU's CR3, read with the guest stopped."""
        with self.stopped(cpu) as w:
            return w.snapshot(backend)

    def assert_released(self, before: Snapshot, after: Snapshot | None = None, *,
                        allow: Iterable[tuple[int, int]] = ()) -> SnapshotDiff:
        """The leak check from the memory side: nothing is mapped in ``after`` (default: now) that was not
        mapped the same way in ``before``, outside the ``allow``-ed VA ranges ([start, start+size)).
        Mappings that went away are fine. Returns the diff."""
        after = after if after is not None else self.snapshot()
        diff = before.diff(after)
        windows = [(start & 0xFFFFFFFFFFFFFFFF, size) for start, size in allow]

        def allowed(va: int, end: int) -> bool:
            return any(start <= va and end <= start + size for start, size in windows)

        added = [r for r in diff.added if not allowed(r.va, r.va_end)]
        changed = [(o, n) for o, n in diff.changed if not allowed(n.va, n.va_end)]
        if added or changed:
            raise VerificationError(
                f"{len(added)} mapping(s) added and {len(changed)} changed remain after the test "
                f"(page-table leak):\n{diff.format()}")
        return diff

    @contextmanager
    def leak_check(self, *, allow: Iterable[tuple[int, int]] = ()) -> Iterator[Snapshot]:
        """Snapshot before the block, and `assert_released` after it (only when the block did not raise)."""
        before = self.snapshot()
        yield before
        self.assert_released(before, allow=list(allow))

    # -- reports --------------------------------------------------------------------------------

    def page_table_dump(self, max_ranges: int = 200) -> str:
        """A readable dump of the guest's page tables for a failing test's report.

        Never raises: a VM that cannot be read gives one line saying why. A guest that stopped with a
        bugcheck is dumped post mortem from the shared RAM mapping (which outlives QEMU) at the CR3 of
        the bugcheck record. At most about ``max_ranges`` lines of ranges (compact: VA-adjacent ranges
        with equal attributes share a line), so the text stays bounded."""
        try:
            return self._dump(max_ranges)
        except Exception as exc:  # a report must never fail because of the dump
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return f"page-table dump unavailable: {type(exc).__name__}: {first}"

    def _dump(self, max_ranges: int) -> str:
        vm = self._vm
        crash = vm.crash
        if crash is not None or not vm.machine.running:
            if isinstance(crash, BugCheck) and self.shared_memory is not None and not self.shared_memory.closed \
                    and self.last_cpu is not None and self.last_cpu.mode is not None:
                snap = snapshot(self.shared_memory, crash.record.cr3, self.last_cpu.mode)
                return (f"post mortem: {vm.name} stopped with bugcheck {crash.record.code:#x}; tables read from the "
                        f"shared RAM at the record's CR3\n" + snap.format(max_ranges=max_ranges, compact=True))
            what = f"the guest stopped ({type(crash).__name__})" if crash is not None else \
                f"QEMU is not running (exit status {vm.machine.exit_status})"
            return f"no page-table dump: {what}"
        with self.stopped(ask_guest=False, timeout=DUMP_QMP_TIMEOUT, check_vcpus=False) as w:
            snap = w.snapshot()
            facts = self._facts
        note = "" if facts is not None and facts.pat_from_guest else \
            " (IA32_PAT not read from the guest: the kernel's documented value is assumed)"
        return snap.format(max_ranges=max_ranges, compact=True) + note


__all__ = [
    "AGENT_CHUNK",
    "CpuState",
    "VerificationError",
    "Verifier",
    "Window",
    "machine_size_option",
    "parse_registers",
]
