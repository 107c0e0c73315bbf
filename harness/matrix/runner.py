"""Runs cases on a VM and compares three things per case: the model's prediction, what the guest saw,
and the case's entries as read from guest RAM after the access.

    cpu = qemu_cpu(vm)                                       # from QEMU's QOM, not from the guest
    run = run_matrix(vm, pruned_cases(vm.config.paging_levels, cpu), cpu)
    assert not run.disagreements, run.report()

Every disagreement is collected (the run never stops at the first); a report shows each one with the
case in words, the prediction, the observation and the entries as built and as read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import InfrastructureError, ProtocolError
from harness.matrix.codec import (
    SIGNATURE,
    VECTOR_PAGE_FAULT,
    Observation,
    ProbeLayout,
    decode_results,
    encode_batch,
)
from harness.matrix.model import (
    QEMU_TCG,
    Access,
    Case,
    Cpu,
    Expect,
    Platform,
    Prediction,
    describe_case,
    describe_error_code,
    describe_prediction,
    predict,
)
from harness.oracle.paging import ENTRY_NAMES, PTE_A, PTE_D, U64_MASK

if TYPE_CHECKING:
    from harness.vm import Vm

Predictor = Callable[[Case], Prediction]
REPORT_IN_FULL = 40  # disagreements a report shows whole; the rest are counted by kind and written to a file


# --------------------------------------------------------------------------------------------------
# The agent's commands


class AccessProbe:
    """access_probe_setup / access_probe_batch / access_probe_release (docs/access-matrix.md)."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm

    def _int(self, values: dict[str, object], key: str) -> int:
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{self._vm.name}: access_probe_setup answered no integer '{key}': {values!r}")
        return value

    def setup(self) -> tuple[ProbeLayout, dict[str, object]]:
        values: dict[str, object] = dict(self._vm.request("access_probe_setup"))
        slots = values.get("slots")
        if not isinstance(slots, bytes) or not slots or len(slots) % 2:
            raise ProtocolError(f"{self._vm.name}: access_probe_setup answered no slot list: {values!r}")
        layout = ProbeLayout(
            levels=self._int(values, "levels"),
            root_pa=self._int(values, "root"),
            tables_pa=self._int(values, "tables"),
            code_pa=self._int(values, "code"),
            data_pa=self._int(values, "data"),
            slots=tuple(int.from_bytes(slots[i : i + 2], "little") for i in range(0, len(slots), 2)),
            maxphyaddr=self._int(values, "maxphyaddr"),
            ring0_read=self._int(values, "ring0_read"),
            ring0_write=self._int(values, "ring0_write"),
            ring3_read=self._int(values, "ring3_read"),
            ring3_write=self._int(values, "ring3_write"),
        )
        return layout, values

    def batch(self, cases: Sequence[Case]) -> list[Observation]:
        values = self._vm.request("access_probe_batch", encode_batch(cases))
        count, data = values.get("count"), values.get("results")
        if count != len(cases) or not isinstance(data, bytes):
            raise ProtocolError(f"{self._vm.name}: access_probe_batch ran {count!r} of {len(cases)} cases")
        return decode_results(data, len(cases))

    def release(self) -> None:
        self._vm.request("access_probe_release")

    @contextmanager
    def session(self) -> Iterator[ProbeLayout]:
        layout, _ = self.setup()
        try:
            yield layout
        finally:
            if self._vm.alive:
                self.release()


def qemu_cpu(vm: Vm) -> Cpu:
    """What vCPU 0 offers, from QEMU's QOM properties: the model does not take the guest's word for it."""
    cpus = vm.qemu.command("query-cpus-fast")
    if not isinstance(cpus, list) or not cpus or not isinstance(cpus[0], dict):
        raise InfrastructureError(f"{vm.name}: query-cpus-fast returned {cpus!r}")
    path = cpus[0]["qom-path"]

    def prop(name: str) -> object:
        return vm.qemu.command("qom-get", path=path, property=name)

    bits = prop("phys-bits")
    if not isinstance(bits, int) or not 32 <= bits <= 52:
        raise InfrastructureError(f"{vm.name}: QEMU reports phys-bits {bits!r}")
    return Cpu(maxphyaddr=bits, pdpe1gb=bool(prop("pdpe1gb")), nx=bool(prop("nx")), smep=bool(prop("smep")),
               smap=bool(prop("smap")))


# --------------------------------------------------------------------------------------------------
# Comparing


@dataclass(frozen=True)
class EntryReading:
    level: int
    address: int  # guest-physical
    built: int  # what the guest had to write (computed by the host)
    read: int  # what guest RAM holds after the access


@dataclass(frozen=True)
class Disagreement:
    case: Case
    prediction: Prediction
    observation: Observation
    va: int
    entries: tuple[EntryReading, ...]
    problems: tuple[str, ...]
    cpu: Cpu
    platform: Platform

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(p.split(":", 1)[0] for p in self.problems)

    def describe(self) -> str:
        lines = ["case: " + describe_case(self.case, self.cpu).replace("\n", "\n      "),
                 f"VA {self.va:#x}",
                 "predicted (" + self.platform.name + "): "
                 + describe_prediction(self.case, self.prediction, self.platform).replace("\n", "\n      "),
                 "observed: " + self.observation.describe(),
                 "entries (built by the guest as the host computes them / read from guest RAM afterwards):"]
        for e in self.entries:
            changed = e.read ^ e.built
            lines.append(f"  {ENTRY_NAMES[e.level]:6} at {e.address:#x}: built {e.built:#018x}, read {e.read:#018x}"
                         + (f" (bits {changed:#x} differ)" if changed else ""))
        lines.append("disagreements:")
        lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


def _bit_problem(name: str, entry_name: str, expect: Expect, built: bool, read: bool) -> str | None:
    if expect is Expect.SET and not read:
        return f"{name} bit: the {entry_name}'s {name} should be set, it is clear"
    if expect is Expect.UNCHANGED and read != built:
        state = "set" if read else "cleared"
        return f"{name} bit: the {entry_name}'s {name} was {state}; it should be left as built ({int(built)})"
    if expect is Expect.EITHER and built and not read:
        return f"{name} bit: the {entry_name}'s {name} was cleared; a walker never clears it"
    return None


def compare(case: Case, prediction: Prediction, observation: Observation, va: int, layout: ProbeLayout,
            entries: Sequence[EntryReading]) -> list[str]:
    """Every way the observation and the entries read back differ from the prediction."""
    problems = []
    p, o, c = prediction, observation, case.controls
    if p.faults and o.vector is None:
        problems.append(f"outcome: predicted #PF {describe_error_code(p.error_code)}, the access completed")
    elif not p.faults and o.vector is not None:
        problems.append(f"outcome: predicted no fault, observed {o.describe()}")
    elif p.faults and o.vector is not None:
        if o.vector != VECTOR_PAGE_FAULT:
            problems.append(f"vector: predicted #PF, observed {o.describe()}")
        else:
            if o.error_code != p.error_code:
                problems.append(f"error code: predicted {describe_error_code(p.error_code)}, observed "
                                f"{describe_error_code(o.error_code)}")
            if o.cr2 != va:
                problems.append(f"CR2: predicted {va:#x} (the accessed VA), observed {o.cr2:#x}")
            rip = layout.fault_rip(case, va)
            if o.rip != rip:
                problems.append(f"RIP: predicted {rip:#x} (the faulting access), observed {o.rip:#x}")
            if o.ring != c.cpl:
                problems.append(f"ring: the fault came from ring {o.ring}, the access ran in ring {c.cpl}")
    elif c.access is Access.READ and o.value != SIGNATURE:
        problems.append(f"value: the read loaded {o.value:#x}, not the data page's signature {SIGNATURE:#x}")
    for i, e in enumerate(entries):
        name = ENTRY_NAMES[e.level]
        if (e.read ^ e.built) & ~(PTE_A | PTE_D) & U64_MASK:
            problems.append(f"entry: the {name} reads {e.read:#x}, the guest was to build {e.built:#x}")
        for bit_name, mask, expect in (("A", PTE_A, p.accessed[i]), ("D", PTE_D, p.dirty[i])):
            problem = _bit_problem(bit_name, name, expect, bool(e.built & mask), bool(e.read & mask))
            if problem:
                problems.append(problem)
    return problems


# --------------------------------------------------------------------------------------------------
# Running


@dataclass
class MatrixRun:
    config: str
    levels: int
    cpu: Cpu
    platform: Platform
    cases: int = 0
    batches: int = 0
    seconds: float = 0.0
    guest_seconds: float = 0.0  # inside access_probe_batch requests (round trips included)
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def cases_per_second(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        counts = Counter(kind for d in self.disagreements for kind in set(d.kinds))
        kinds = ", ".join(f"{kind} {n}" for kind, n in counts.most_common())
        return (f"{self.config} ({self.levels}-level, {self.cpu.describe()}): {self.cases} cases in {self.batches} "
                f"batches, {len(self.disagreements)} disagreeing with the model of {self.platform.name}"
                + (f" (by kind: {kinds})" if kinds else ""))

    def report(self, full_report: Path | None = None) -> str:
        """The summary and the first disagreements in full; every one goes to ``full_report`` if given."""
        parts = [self.summary()]
        for d in self.disagreements[:REPORT_IN_FULL]:
            parts.append(d.describe())
        rest = len(self.disagreements) - REPORT_IN_FULL
        if full_report is not None and self.disagreements:
            full_report.parent.mkdir(parents=True, exist_ok=True)
            full_report.write_text("\n\n".join([self.summary(), *(d.describe() for d in self.disagreements)]) + "\n")
        if rest > 0:
            parts.append(f"... and {rest} more" + (f", all in {full_report}" if full_report else ""))
        return "\n\n".join(parts)


def run_matrix(vm: Vm, cases: Sequence[Case], cpu: Cpu, *, platform: Platform = QEMU_TCG,
               predictor: Predictor | None = None) -> MatrixRun:
    """Runs every case, in batches as large as the probe space allows, and compares each one."""
    predictor = predictor or partial(predict, cpu=cpu, platform=platform)
    levels = vm.config.paging_levels
    run = MatrixRun(vm.name, levels, cpu, platform)
    memory = vm.verify.memory
    start = time.perf_counter()
    with AccessProbe(vm).session() as layout:
        if layout.levels != levels:
            raise InfrastructureError(f"{vm.name}: the probe runs {layout.levels}-level paging, the config says "
                                      f"{levels}")
        if layout.maxphyaddr != cpu.maxphyaddr:
            raise InfrastructureError(f"{vm.name}: the guest's CPUID says MAXPHYADDR {layout.maxphyaddr}, QEMU's "
                                      f"phys-bits {cpu.maxphyaddr}")
        signature = memory.read_u64(layout.data_pa + 0x100)
        if signature != SIGNATURE:
            raise InfrastructureError(f"{vm.name}: the probe's data page holds {signature:#x}, not {SIGNATURE:#x}")
        for first in range(0, len(cases), layout.batch_size):
            batch = cases[first : first + layout.batch_size]
            for case in batch:
                if case.levels != levels:
                    raise ValueError(f"a {case.levels}-level case cannot run on {levels}-level paging")
            sent = time.perf_counter()
            observations = AccessProbe(vm).batch(batch)
            run.guest_seconds += time.perf_counter() - sent
            run.batches += 1
            for index, (case, observation) in enumerate(zip(batch, observations, strict=True)):
                va = layout.va(index, case.controls.access)
                readings = []
                for i, entry in enumerate(case.entries):
                    level = case.level(i)
                    address = layout.entry_address(index, level, va)
                    readings.append(EntryReading(level, address,
                                                 layout.entry_value(index, level, entry, case.controls.access),
                                                 memory.read_u64(address)))
                prediction = predictor(case)
                problems = compare(case, prediction, observation, va, layout, readings)
                if problems:
                    run.disagreements.append(Disagreement(case, prediction, observation, va, tuple(readings),
                                                          tuple(problems), cpu, platform))
            run.cases += len(batch)
    run.seconds = time.perf_counter() - start
    return run

