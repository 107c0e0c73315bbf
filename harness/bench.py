"""Measurements behind `mmhil bench`: each figure is printed beside a reference measured in the same run."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.build import KernelImage
from harness.config import VmConfig
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
        """Interquartile range and extremes, in milliseconds or seconds."""
        if len(self.values) < 2:
            return "spread n/a (one run)"
        scale = {"ms": 1e3, "s": 1.0}[unit]
        q1, _, q3 = (q * scale for q in statistics.quantiles(self.values, n=4))
        low, high = min(self.values) * scale, max(self.values) * scale
        return f"IQR {q1:.1f}-{q3:.1f} {unit}, min {low:.1f}, max {high:.1f}"


def repeat(run: Callable[[], float], times: int) -> Sample:
    return Sample(tuple(run() for _ in range(times)))


def floor_run(config: VmConfig, accelerator: str) -> float:
    """QEMU's own floor for this machine type: start paused, no guest, `quit`, exit."""
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-") as scratch:
        plan = LaunchPlan(kernel=None, accelerator=accelerator, artifacts=Path(scratch), shared_ram=False)
        machine = QemuMachine(config, plan)
        start = time.monotonic()
        machine.launch()
        machine.shutdown()
        return time.monotonic() - start


def boot_run(config: VmConfig, kernel: KernelImage, accelerator: str, artifacts: Path) -> float:
    """Start QEMU to the agent's hello: the time a test waits for a fresh VM."""
    vm = Vm(config, kernel=kernel, accelerator=accelerator, artifacts=artifacts)
    try:
        vm.boot()
        assert vm.boot_seconds is not None
        return vm.boot_seconds
    finally:
        vm.shutdown()
