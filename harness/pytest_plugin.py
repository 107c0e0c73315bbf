"""pytest plugin: booted-VM fixtures over a matrix of VM configurations.

A test that takes the `vm` fixture runs once per selected config (`test_x[la57]`). Within a worker
a VM is booted once per config and reused by the next test, unless a test failed on it or the guest
stopped, in which case the next test gets a fresh VM. A config this host cannot run is skipped with
the probe's reason; a config whose VM failed to come up skips its remaining tests instead of letting
each of them time out.

Tests run grouped by config (and, under pytest-xdist's `--dist loadgroup`, one config per worker
at a time), and a worker keeps a single VM running: the agent polls its UART, so an idle VM still
costs a host core.

Options: --vm-config NAME (repeatable; NAME may be group:G), --vm-accel tcg|kvm|auto,
--vm-artifacts DIR. Marker: @pytest.mark.requires("la57", memory_gib=6, paging=5, accelerator="tcg").
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness.build import REPO_ROOT, KernelImage, build_kernel
from harness.config import VmConfig, load_configs, select_configs
from harness.errors import GuestCrash, MmhilError
from harness.probe import probe
from harness.vm import Vm

_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmhil", "mmhil VM tests")
    group.addoption("--vm-config", action="append", default=[], metavar="NAME",
                    help="VM config to run VM tests on (repeatable, or comma-separated; group:G selects a "
                         "group). Default: every config in vm_images/.")
    group.addoption("--vm-accel", choices=("tcg", "kvm", "auto"), default=None,
                    help="override every selected config's accelerator")
    group.addoption("--vm-artifacts", default=str(REPO_ROOT / "artifacts"), metavar="DIR",
                    help="where VM logs go (default: artifacts/)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*cpu_features, memory_gib=0, paging=None, accelerator=None): run only on VM configs "
        "that provide these",
    )


def _selected_configs(config: pytest.Config) -> list[VmConfig]:
    available = load_configs()
    names = [n for option in config.getoption("--vm-config") for n in option.split(",") if n]
    chosen = select_configs(available, names) if names else list(available.values())
    accel = config.getoption("--vm-accel")
    return [replace(c, accelerator=accel) if accel else c for c in chosen]


def _unmet(vm_config: VmConfig, marker: pytest.Mark | None) -> str | None:
    """Why a config cannot serve a test's `requires` marker, or None if it can."""
    if marker is None:
        return None
    missing = [f for f in marker.args if f not in vm_config.required_features]
    if missing:
        return f"needs CPU features {', '.join(missing)}; config {vm_config.name} does not require them"
    memory_gib = marker.kwargs.get("memory_gib", 0)
    if vm_config.memory_mib < memory_gib * 1024:
        return f"needs {memory_gib} GiB of RAM; config {vm_config.name} has {vm_config.memory_mib} MiB"
    paging = marker.kwargs.get("paging")
    if paging is not None and vm_config.paging_levels != paging:
        return f"needs {paging}-level paging; config {vm_config.name} has {vm_config.paging_levels}"
    accelerator = marker.kwargs.get("accelerator")
    if accelerator is not None and vm_config.accelerator not in (accelerator, "auto"):
        return f"needs {accelerator}; config {vm_config.name} runs {vm_config.accelerator}"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vm_config" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("requires")
    params = []
    for vm_config in _selected_configs(metafunc.config):
        reason = _unmet(vm_config, marker)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        # One xdist group per config: a config's tests share a worker, and so its booted VM.
        marks += [pytest.mark.vm, pytest.mark.xdist_group(vm_config.name)]
        params.append(pytest.param(vm_config, id=vm_config.name, marks=marks))
    metafunc.parametrize("vm_config", params, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run a config's tests back to back, so each worker keeps one VM busy instead of rebooting."""

    def config_of(item: pytest.Item) -> str:
        callspec = getattr(item, "callspec", None)
        config = callspec.params.get("vm_config") if callspec else None
        return config.name if isinstance(config, VmConfig) else ""

    items.sort(key=config_of)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    if report.failed:
        slot = item.stash.get(_VM_KEY, None)
        if slot is not None:
            report.sections.append(("mmhil VM", slot.describe()))
    return report


@dataclass
class _Slot:
    """The VM a worker keeps for one config between tests."""

    vm: Vm | None = None
    bring_up_error: str | None = None
    boots: int = 0

    def describe(self) -> str:
        vm = self.vm
        if vm is None:
            return self.bring_up_error or "no VM"
        m = vm.machine
        return (f"config {vm.name} on {vm.accelerator}, QEMU pid {m.pid}, exit status {m.exit_status}\n"
                f"artifacts: {vm.artifacts}\n"
                f"console tail ({m.console_log}):\n{vm.console_tail(30)}\n"
                f"QEMU stderr ({m.stderr_log}):\n{m.stderr_tail(10) or '(empty)'}\n"
                f"command line: {m.command_line()}")


_VM_KEY = pytest.StashKey[_Slot]()


class VmPool:
    """One worker's VMs, by config name."""

    def __init__(self, kernel: KernelImage, artifacts: Path) -> None:
        self.kernel = kernel
        self.artifacts = artifacts
        self.slots: dict[str, _Slot] = {}

    def get(self, vm_config: VmConfig) -> tuple[_Slot, Vm]:
        slot = self.slots.setdefault(vm_config.name, _Slot())
        if slot.bring_up_error is not None:
            pytest.skip(f"VM {vm_config.name} failed to come up earlier in this run: {slot.bring_up_error}")
        if slot.vm is not None and slot.vm.alive:
            return slot, slot.vm
        # A polled guest keeps a host core busy even when idle: keep one VM per worker running.
        for name in list(self.slots):
            self.discard(name)
        result = probe(vm_config)
        if not result.runnable:
            slot.bring_up_error = result.reason
            pytest.skip(f"{vm_config.name}: {result.reason}")
        slot.boots += 1
        vm = Vm(vm_config, kernel=self.kernel, accelerator=result.accelerator,
                artifacts=self.artifacts / vm_config.name / f"boot-{slot.boots}")
        slot.vm = vm
        try:
            vm.boot()
        except (MmhilError, OSError) as exc:
            slot.bring_up_error = str(exc).splitlines()[0]
            raise
        return slot, vm

    def discard(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is not None and slot.vm is not None:
            slot.vm.shutdown()
            slot.vm = None

    def close(self) -> None:
        for name in list(self.slots):
            self.discard(name)


@pytest.fixture(scope="session")
def mmhil_kernel() -> KernelImage:
    """The guest kernel, built once (under a file lock, so once across xdist workers too)."""
    return build_kernel()


@pytest.fixture(scope="session")
def vm_pool(request: pytest.FixtureRequest, mmhil_kernel: KernelImage) -> Iterator[VmPool]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = Path(request.config.getoption("--vm-artifacts")) / worker
    shutil.rmtree(root, ignore_errors=True)
    pool = VmPool(mmhil_kernel, root)
    yield pool
    pool.close()


@pytest.fixture
def vm_config(request: pytest.FixtureRequest) -> VmConfig:
    config: VmConfig = request.param
    return config


@pytest.fixture
def vm(request: pytest.FixtureRequest, vm_pool: VmPool, vm_config: VmConfig) -> Iterator[Vm]:
    """A booted VM of the test's config; shared with later tests unless this one fails or crashes it."""
    slot, machine = vm_pool.get(vm_config)
    request.node.stash[_VM_KEY] = slot
    yield machine
    reports = request.node.stash.get(_REPORT_KEY, {})
    failed = any(r.failed for r in reports.values())
    if failed or not machine.alive or isinstance(machine.crash, GuestCrash):
        vm_pool.discard(vm_config.name)


@pytest.fixture
def fresh_vm(request: pytest.FixtureRequest, vm_pool: VmPool, vm_config: VmConfig) -> Iterator[Vm]:
    """A VM booted for this test alone (for tests that crash or kill it on purpose)."""
    vm_pool.discard(vm_config.name)
    slot, machine = vm_pool.get(vm_config)
    request.node.stash[_VM_KEY] = slot
    yield machine
    vm_pool.discard(vm_config.name)

