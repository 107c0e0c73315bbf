"""What the fuzz and soak commands share: one VM at a time (rebooted after a death, every boot's logs
kept), the findings file, and the leak check at the end of a run."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from harness.build import KernelImage, build_kernel
from harness.config import VmConfig, load_configs, select_configs
from harness.errors import MmhilError
from harness.probe import probe
from harness.vm import Vm


class VmSource(Protocol):
    """Where a runner gets its VM, and a fresh one after a death."""

    boots: int

    @property
    def vm(self) -> Vm: ...

    @property
    def boot_folder(self) -> Path: ...

    def reboot(self) -> Vm: ...

    def describe(self) -> str: ...


class SingleVm:
    """A VM someone else owns (a test's fixture), used as it is: a run on it stops at its first death."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self.boots = 1

    @property
    def vm(self) -> Vm:
        return self._vm

    @property
    def boot_folder(self) -> Path:
        return self._vm.artifacts

    def reboot(self) -> Vm:
        raise MmhilError(f"{self._vm.name}: the VM died and this run may not reboot it")

    def describe(self) -> str:
        c = self._vm.config
        return f"{c.name} ({c.machine}, {self._vm.accelerator}, {c.paging_levels}-level, {c.memory_mib} MiB)"


class FuzzSession:
    """Boots `config` into `artifacts/boot-N/` and hands out the VM; `reboot()` after a death."""

    def __init__(self, config: VmConfig, accelerator: str, kernel: KernelImage, artifacts: Path) -> None:
        self.config = config
        self.accelerator = accelerator
        self.kernel = kernel
        self.artifacts = artifacts
        self.boots = 0
        self._vm: Vm | None = None

    @classmethod
    def open(cls, config_name: str, config_dir: Path, accelerator: str | None, artifacts: Path) -> FuzzSession:
        chosen = select_configs(load_configs(config_dir), [config_name])
        if len(chosen) != 1:
            raise MmhilError(f"--vm-config {config_name} names {len(chosen)} configs; this command boots one")
        config = dataclasses.replace(chosen[0], accelerator=accelerator) if accelerator else chosen[0]
        result = probe(config)
        if not result.runnable:
            raise MmhilError(f"{config.name} cannot run here: {result.reason}")
        artifacts.mkdir(parents=True, exist_ok=True)
        for old in artifacts.glob("boot-*"):  # a previous run's logs in the same folder would mislead
            shutil.rmtree(old, ignore_errors=True)
        return cls(config, result.accelerator, build_kernel(), artifacts)

    @property
    def vm(self) -> Vm:
        if self._vm is None or not self._vm.alive:
            self.reboot()
        assert self._vm is not None
        return self._vm

    @property
    def boot_folder(self) -> Path:
        return self.artifacts / f"boot-{self.boots}"

    def reboot(self) -> Vm:
        self.close()
        self.boots += 1
        vm = Vm(self.config, kernel=self.kernel, accelerator=self.accelerator, artifacts=self.boot_folder)
        try:
            vm.boot()
        except BaseException:
            vm.shutdown()
            raise
        self._vm = vm
        return vm

    def close(self) -> None:
        if self._vm is not None:
            self._vm.shutdown()
            self._vm = None

    def describe(self) -> str:
        c = self.config
        return f"{c.name} ({c.machine}, {self.accelerator}, {c.paging_levels}-level, {c.memory_mib} MiB)"


@dataclass
class Finding:
    """Something a fuzz or soak run found: what, where (seed and index replay it), and the evidence."""

    kind: str
    seed: int
    index: int
    what: str
    detail: str = ""
    replay: str = ""
    boot: str = ""
    at: float = field(default_factory=time.time)

    def line(self) -> str:
        return f"FINDING {self.kind} at seed {self.seed} index {self.index}: {self.what}" + \
            (f"\n  replay: {self.replay}" if self.replay else "")


class FindingLog:
    """Findings as JSON lines, each written as soon as it is found (a killed run keeps what it found)."""

    def __init__(self, path: Path, echo: TextIO | None = None) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self._echo = echo
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(finding)) + "\n")
        if self._echo is not None:
            print(finding.line(), file=self._echo, flush=True)

    def count(self, prefix: str = "") -> int:
        return sum(1 for f in self.findings if f.kind.startswith(prefix))


def nonzero_outstanding(counts: dict[str, int]) -> dict[str, int]:
    """Every count of `outstanding` that is not zero (the IRQL included): what a run left behind."""
    return {key: value for key, value in counts.items() if value}
