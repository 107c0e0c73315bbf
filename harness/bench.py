"""Measurements behind `mmhil bench`: each figure is printed beside a reference measured in the same run."""

from __future__ import annotations

import itertools
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.build import KernelImage
from harness.config import VmConfig
from harness.errors import MmhilError
from harness.machine import LaunchPlan, QemuMachine
from harness.vm import Vm


@dataclass(frozen=True)
class Sample:
    """Seconds per run over repeated runs."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, unit: str = "ms") -> str:
        """Interquartile range and extremes, in microseconds, milliseconds or seconds."""
        if len(self.values) < 2:
            return "spread n/a (one run)"
        scale = {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]
        q1, _, q3 = (q * scale for q in statistics.quantiles(self.values, n=4))
        low, high = min(self.values) * scale, max(self.values) * scale
        return f"IQR {q1:.1f}-{q3:.1f} {unit}, min {low:.1f}, max {high:.1f}"


@dataclass(frozen=True)
class Lives:
    """One subject's floor and boot runs, taken in pairs: the floor just before each boot."""

    floors: Sample
    boots: Sample

    @property
    def leads(self) -> Sample:
        """Each boot less the floor run before it."""
        return Sample(tuple(b - f for f, b in zip(self.floors.values, self.boots.values, strict=True)))


def paired(runs: dict[str, tuple[Callable[[], float], Callable[[], float]]], times: int) -> dict[str, Lives]:
    """Every subject's (floor, boot) pair in turn, round after round, after one unmeasured round (the
    first run pays for cold caches). Load on the machine drifts over a run; alternating puts floors,
    boots and the builds being compared under the same drift."""
    for floor, boot in runs.values():
        floor()
        boot()
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(times):
        for name, (floor, boot) in runs.items():
            measured[name].append((floor(), boot()))
    return {name: Lives(Sample(tuple(f for f, _ in pairs)), Sample(tuple(b for _, b in pairs)))
            for name, pairs in measured.items()}


@dataclass(frozen=True)
class Difference:
    """`subject`'s median less `reference`'s, with a 95% bootstrap interval for it."""

    median: float
    low: float
    high: float

    @property
    def settled(self) -> bool:
        """The interval leaves out zero: the runs tell the two apart."""
        return self.low > 0 or self.high < 0


def median_difference(reference: Sample, subject: Sample, resamples: int = 2000, seed: int = 0) -> Difference:
    """Medians of runs this noisy (a boot's IQR is about 1.5 ms) move by tenths of a millisecond
    between runs of one tree, so a change of that size needs its interval: resample each side with
    replacement and take the 2.5th and 97.5th percentiles of the medians' differences."""
    if len(reference.values) < 3 or len(subject.values) < 3:
        raise MmhilError("a median difference needs at least 3 runs on each side")
    draw = random.Random(seed)
    spread = sorted(statistics.median(draw.choices(subject.values, k=len(subject.values)))
                    - statistics.median(draw.choices(reference.values, k=len(reference.values)))
                    for _ in range(resamples))
    return Difference(subject.median - reference.median, spread[int(0.025 * resamples)],
                      spread[int(0.975 * resamples) - 1])


def floor_run(config: VmConfig, kernel: KernelImage, accelerator: str) -> float:
    """QEMU's own floor for this machine: the whole life of the same machine, RAM backend and firmware
    ROM included, started paused with no guest and quit at once. boot_run times the same life with a
    boot in it."""
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-") as scratch:
        plan = LaunchPlan(kernel=None, accelerator=accelerator, artifacts=Path(scratch), shared_ram=config.shares_ram,
                          firmware=kernel.firmware_for(config))
        machine = QemuMachine(config, plan)
        machine.launch()
        machine.shutdown()
        return time.monotonic() - machine.launched_at


def _guest_tsc_rate(vm: Vm) -> float:
    """Guest TSC ticks per host second, from two `boot_phases` answers 50 ms apart."""
    samples = []
    for _ in range(2):
        before = time.monotonic()
        tsc = vm.request("boot_phases")["tsc"]
        samples.append(((before + time.monotonic()) / 2, tsc))
        time.sleep(0.05)
    (t0, tsc0), (t1, tsc1) = samples
    if not isinstance(tsc0, int) or not isinstance(tsc1, int) or tsc1 <= tsc0:
        raise MmhilError(f"{vm.name}: the guest's TSC did not advance: {tsc0!r} then {tsc1!r}")
    return (tsc1 - tsc0) / (t1 - t0)


def boot_phases(vm: Vm) -> dict[str, float]:
    """Seconds of each step of a finished boot, on the host's clock: the host's own steps, the
    firmware's, each guest phase (boot_phases.h), the hello's way to the host and, apart, the
    guest's console output."""
    answer = vm.request("boot_phases")
    stamps = [(name, int(tsc)) for name, tsc in (item.split(":") for item in str(answer["phases"]).split(","))]
    rate = _guest_tsc_rate(vm)
    clock = vm.boot_clock
    entry_tsc, hello_tsc = stamps[0][1], stamps[-1][1]
    waited = clock["ready"] - clock["resumed"]
    guest = (hello_tsc - entry_tsc) / rate
    if vm.accelerator == "tcg":
        # TCG's TSC counts host ticks only while the VM runs, from zero: the stub's stamp is the
        # time since `cont`, and what the guest and the firmware leave of the wait is the hello's way over.
        firmware_step, firmware = "firmware (cont to the boot stub)", entry_tsc / rate
    else:
        # KVM's TSC ran before `cont`: the firmware's share and the hello's way over are one step.
        firmware_step, firmware = "firmware, and the hello's way to the host", waited - guest
    phases = {
        "QEMU start (to QMP)": clock["qmp"] - clock["launched"],
        "host: cont sent": clock["resumed"] - clock["qmp"],
        firmware_step: firmware,
    }
    for (_, earlier), (name, later) in itertools.pairwise(stamps):
        phases[f"guest {name}"] = (later - earlier) / rate
    if vm.accelerator == "tcg":
        phases[f"the hello over {vm.hello_channel} to the host's wait"] = waited - firmware - guest
    phases["guest console output (within the above)"] = int(answer["console_ticks"]) / rate
    return phases


IN_ASM_LOG = "in_asm.log"  # in QEMU's working directory, taken through its scratch files
_TRANSLATED = re.compile(r"^0x([0-9a-f]+):", re.M)


@dataclass(frozen=True)
class Translation:
    """What TCG translated during one boot, from QEMU's `-d in_asm` log, which lists blocks in the
    order they were translated: each guest instruction counts once per block it was translated into."""

    blocks: int
    firmware_instructions: int  # before the first block at the kernel's PVH entry
    kernel_instructions: int  # from there on: the boot stub, the kernel, the APs' trampoline


def parse_in_asm(log: str, kernel_entry: int) -> Translation:
    instructions = [int(match.group(1), 16) for match in _TRANSLATED.finditer(log)]
    if kernel_entry not in instructions:
        raise MmhilError(f"QEMU's in_asm log never reaches the kernel's entry at {kernel_entry:#x}: "
                         f"{len(instructions)} instructions logged")
    firmware = instructions.index(kernel_entry)
    return Translation(len(re.findall(r"^IN:", log, re.M)), firmware, len(instructions) - firmware)


def translation_run(config: VmConfig, kernel: KernelImage, artifacts: Path) -> Translation:
    """One more boot under TCG, QEMU logging every block it translates (-d in_asm): how much guest code
    the boot runs for the first time. Translation is most of a TCG boot's guest time; the log
    slows this boot, so it is apart from the timed ones."""
    logged = replace(config, extra_args=(*config.extra_args, "-d", "in_asm", "-D", IN_ASM_LOG))
    vm = Vm(logged, kernel=kernel, accelerator="tcg", artifacts=artifacts)
    try:
        vm.boot()
        log = vm.machine.scratch.take(IN_ASM_LOG)
    finally:
        vm.shutdown()
    return parse_in_asm(log.decode("ascii", errors="replace"), kernel.entry_address)


def boot_run(config: VmConfig, kernel: KernelImage, accelerator: str, artifacts: Path,
             phases: list[dict[str, float]] | None = None) -> float:
    """The whole life of a VM that boots to the agent's hello and is shut down, as floor_run times
    a paused one: the start and the exit are in both. With `phases`, the boot's steps (boot_phases)
    and the shutdown are appended to it."""
    vm = Vm(config, kernel=kernel, accelerator=accelerator, artifacts=artifacts)
    steps: dict[str, float] = {}
    try:
        vm.boot()
        if phases is not None:
            steps = boot_phases(vm)
    finally:
        stopping = time.monotonic()
        vm.shutdown()
        stopped = time.monotonic()
    steps["shutdown (quit to exit)"] = stopped - stopping
    if phases is not None:
        phases.append(steps)
    return stopped - vm.machine.launched_at - (stopping - vm.boot_clock["ready"])
