"""QEMU's lifecycle: refused launches explain themselves, events are all kept, probes tell why not."""

from dataclasses import replace
from pathlib import Path

import pytest

from harness.build import KernelImage
from harness.config import VmConfig, load_configs
from harness.errors import QemuLaunchError
from harness.machine import LaunchPlan, QemuMachine
from harness.probe import probe_on
from harness.qmp import QmpCommandError
from harness.vm import Vm


@pytest.fixture
def broken_config() -> VmConfig:
    return replace(load_configs()["default"], name="broken", extra_args=("-device", "no-such-device"))


def test_refused_launch_carries_exit_code_command_line_and_stderr(
    broken_config: VmConfig, mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    vm = Vm(broken_config, kernel=mmhil_kernel, accelerator="tcg", artifacts=tmp_path)
    with pytest.raises(QemuLaunchError) as caught, vm:
        pass
    error = caught.value
    assert error.exit_code == 1
    assert "-device no-such-device" in error.command_line
    assert "no-such-device" in error.stderr
    assert "no-such-device" in str(error) and "command line:" in str(error)
    assert not vm.machine.running


def test_probe_reports_qemus_own_reason_for_a_config_it_rejects(broken_config: VmConfig) -> None:
    result = probe_on(broken_config, "tcg")
    assert not result.runnable
    assert "no-such-device" in result.reason


def test_probe_names_missing_cpu_features() -> None:
    config = replace(load_configs()["default"], name="la57-on-qemu64", cpu="qemu64", paging_levels=5)
    result = probe_on(config, "tcg")
    assert not result.runnable
    assert result.missing_features == ("smep", "smap", "la57"), "default requires smep and smap; qemu64 has none"
    assert "lacks smep, smap, la57" in result.reason


def test_every_qmp_event_is_recorded_in_order_and_logged(vm: Vm) -> None:
    qmp = vm.machine.qmp
    assert qmp is not None
    before = len(qmp.events)
    for _ in range(3):
        with vm.qemu.stopped():
            pass
    # Events arrive on their own, possibly after the command's reply: wait for the sixth.
    assert qmp.wait_event("RESUME", vm.timeout, since=before + 5) is not None, [e.name for e in qmp.events[before:]]
    names = [e.name for e in qmp.events[before:]]
    assert names == ["STOP", "RESUME"] * 3
    assert [e.name for e in qmp.events[:1]] == ["RESUME"], "the first event is the boot's `cont`"
    assert vm.machine.qmp_log.read_text().count('"event": "STOP"') >= 3


def test_machine_without_guest_starts_paused_and_quits_cleanly(tmp_path: Path) -> None:
    machine = QemuMachine(load_configs()["default"], LaunchPlan(None, "tcg", tmp_path, shared_ram=True))
    machine.launch()
    assert machine.running and machine.qmp is not None
    assert machine.qmp.command("query-status") == {"status": "prelaunch", "singlestep": False, "running": False}
    runtime = machine.runtime_dir
    assert machine.shutdown() == 0
    assert not machine.running and not runtime.exists()


def test_a_submitted_command_is_answered_later_and_a_refusal_names_the_command(tmp_path: Path) -> None:
    machine = QemuMachine(load_configs()["default"], LaunchPlan(None, "tcg", tmp_path, shared_ram=False))
    machine.launch()
    try:
        assert machine.qmp is not None
        refused = machine.qmp.submit("no-such-command")
        status = machine.qmp.submit("query-status")
        assert status.wait(5.0) == {"status": "prelaunch", "singlestep": False, "running": False}
        with pytest.raises(QmpCommandError) as caught:
            refused.wait(5.0)
        assert caught.value.command == "no-such-command" and caught.value.error_class == "CommandNotFound"
        assert '"error"' in machine.qmp_log.read_text() and "no-such-command" in machine.qmp_log.read_text()
    finally:
        machine.shutdown()
