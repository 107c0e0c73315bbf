"""Before a VM boots: can this host run its config, and on which accelerator?

The probe starts QEMU with the config's own machine, CPU, memory and accelerator, paused and without
a guest, then asks the vCPU object itself (QOM) which of the required features it really has: a
feature QEMU or KVM cannot provide is filtered out there, with no guest ever running. A config QEMU
rejects outright is reported with QEMU's own message. Nothing here can hang on the guest: no guest
instruction runs (and an unsupported CR4 bit hangs TCG, qemu-facts.md).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.config import VmConfig
from harness.errors import HostUnreachable, InfrastructureError, QemuLaunchError
from harness.hosts import VmHost, local_host
from harness.machine import QEMU_BINARY, LaunchPlan, QemuMachine


@dataclass(frozen=True)
class ProbeResult:
    config: str
    accelerator: str
    runnable: bool
    reason: str  # why not, or a note on how the accelerator was chosen
    missing_features: tuple[str, ...] = ()
    rejected: bool = False  # QEMU refused the config's command line: a broken config, not a host limit
    detail: str = ""  # for a rejection: QEMU's exit code, command line and stderr


def kvm_status(host: VmHost | None = None) -> tuple[bool, str]:
    """KVM is usable only where QEMU on that host can open /dev/kvm read-write."""
    return (host or local_host()).kvm_status()


@cache
def qemu_version(binary: str = QEMU_BINARY) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def _cpu_features(machine: QemuMachine, features: tuple[str, ...]) -> dict[str, bool]:
    assert machine.qmp is not None
    cpus = machine.qmp.command("query-cpus-fast")
    if not isinstance(cpus, list) or not cpus:
        raise InfrastructureError(f"{machine.name}: query-cpus-fast returned {cpus!r}")
    path = cpus[0]["qom-path"]
    found = {}
    for feature in features:
        value = machine.qmp.command("qom-get", {"path": path, "property": feature})
        found[feature] = bool(value)
    return found


def probe_on(config: VmConfig, accelerator: str, host: VmHost | None = None) -> ProbeResult:
    with tempfile.TemporaryDirectory(prefix="mmhil-probe-") as scratch:
        plan = LaunchPlan(kernel=None, accelerator=accelerator, artifacts=Path(scratch), shared_ram=False)
        machine = QemuMachine(config, plan, host=host)
        try:
            machine.launch(timeout=min(config.timeout, 20.0))
        except QemuLaunchError as exc:
            lines = [ln for ln in exc.stderr.splitlines() if ln.strip()]
            message = lines[-1] if lines else f"exit code {exc.exit_code}"
            return ProbeResult(config.name, accelerator, False, f"QEMU rejects it under {accelerator}: {message}",
                               rejected=True, detail=str(exc))
        try:
            try:
                features = _cpu_features(machine, config.required_features)
            except InfrastructureError as exc:
                return ProbeResult(config.name, accelerator, False, f"feature probe failed: {exc}")
        finally:
            machine.shutdown()
    missing = tuple(name for name, present in features.items() if not present)
    if missing:
        return ProbeResult(config.name, accelerator, False,
                           f"CPU '{config.cpu}' under {accelerator} lacks {', '.join(missing)}", missing)
    return ProbeResult(config.name, accelerator, True, f"runs under {accelerator}")


def probe(config: VmConfig, host: VmHost | None = None) -> ProbeResult:
    """Resolve the config's accelerator and check that the host (default: this machine) can run it.

    A host that cannot be reached makes the config unrunnable there, with the reason; a host whose
    key does not match known_hosts raises HostKeyError (nothing is launched on it). Cached per process.
    """
    return _probe(config, host or local_host())


@cache
def _probe(config: VmConfig, host: VmHost) -> ProbeResult:
    where = "" if host.is_local else f" on {host.name}"
    try:
        host.check()
        usable, why = host.kvm_status()
    except HostUnreachable as exc:
        return ProbeResult(config.name, config.accelerator, False, str(exc))
    if config.accelerator == "tcg":
        return probe_on(config, "tcg", host)
    if config.accelerator == "kvm":
        if not usable:
            return ProbeResult(config.name, "kvm", False, f"KVM is unusable{where or ' here'} ({why})")
        return probe_on(config, "kvm", host)
    if usable:
        on_kvm = probe_on(config, "kvm", host)
        if on_kvm.runnable:
            return ProbeResult(config.name, "kvm", True, "auto: KVM is usable and has every required feature")
        on_tcg = probe_on(config, "tcg", host)
        return ProbeResult(config.name, "tcg", on_tcg.runnable,
                           f"auto: TCG, because under KVM {on_kvm.reason}" if on_tcg.runnable else on_tcg.reason,
                           on_tcg.missing_features, on_tcg.rejected, on_tcg.detail)
    on_tcg = probe_on(config, "tcg", host)
    if on_tcg.runnable:
        return ProbeResult(config.name, "tcg", True, f"auto: TCG, because {why}")
    return on_tcg
