"""Nothing survives a VM: no QEMU process, no runtime directory, no /dev/shm file.

Each case boots a VM in a child process and ends the child the way real runs end: normally, by
Ctrl-C, and by SIGKILL (a killed pytest-xdist worker, which gets no chance to clean up).
"""

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _processes import pid_alive, wait_gone

from harness.config import VmConfig
from harness.machine import SHM_DIR, sweep_stale_runtime_dirs
from harness.probe import probe

CHILD = Path(__file__).with_name("_boot_child.py")


ChildReport = dict[str, Any]


@contextmanager
def booted_child(
    vm_config: VmConfig, tmp_path: Path, mode: str, mmhil_kernel: object
) -> Iterator[tuple[subprocess.Popen[str], ChildReport]]:
    """A child process with its VM booted; killed on the way out if the test left it running."""
    result = probe(vm_config)
    if not result.runnable:
        pytest.skip(result.reason)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), vm_config.name, result.accelerator, str(tmp_path / "artifacts"), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            child.wait(30)
            pytest.fail(f"child did not boot its VM: {child.stderr.read() if child.stderr else ''}")
        report = json.loads(line)
        if mode == "wait":  # an "exit" child may already have shut its VM down
            assert pid_alive(report["qemu_pid"])
        assert report["shm_names"] == [], "the RAM file must leave /dev/shm as soon as it is opened"
        if report["ram_mode"] is not None:
            assert report["ram_mode"] == 0o600
        yield child, report
    finally:
        if child.poll() is None:  # a failed test must not leave its child and QEMU behind
            child.kill()
            child.wait(30)


def assert_nothing_left(child_pid: int, report: ChildReport) -> None:
    assert wait_gone(report["qemu_pid"], 15), f"QEMU {report['qemu_pid']} outlived its harness"
    assert not Path(report["runtime_dir"]).exists(), f"{report['runtime_dir']} was left behind"
    assert list(SHM_DIR.glob(f"mmhil-{child_pid}-*")) == []


def test_normal_exit_leaves_nothing(vm_config: VmConfig, tmp_path: Path, mmhil_kernel: object) -> None:
    with booted_child(vm_config, tmp_path, "exit", mmhil_kernel) as (child, report):
        assert child.wait(60) == 0
    assert_nothing_left(child.pid, report)


def test_ctrl_c_leaves_nothing(vm_config: VmConfig, tmp_path: Path, mmhil_kernel: object) -> None:
    with booted_child(vm_config, tmp_path, "wait", mmhil_kernel) as (child, report):
        child.send_signal(signal.SIGINT)
        assert child.wait(60) != 0
    assert_nothing_left(child.pid, report)


def test_sigkilled_harness_leaves_no_qemu_and_its_files_are_swept(
    vm_config: VmConfig, tmp_path: Path, mmhil_kernel: object
) -> None:
    with booted_child(vm_config, tmp_path, "wait", mmhil_kernel) as (child, report):
        child.kill()
        child.wait(30)
    assert wait_gone(report["qemu_pid"], 15), "QEMU must die with the process that launched it"
    # The dead harness could not remove its directory; the next launch's sweep does.
    assert Path(report["runtime_dir"]) in sweep_stale_runtime_dirs() or not Path(report["runtime_dir"]).exists()
    assert_nothing_left(child.pid, report)
