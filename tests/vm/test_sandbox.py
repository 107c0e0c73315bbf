"""Every QEMU mmhil starts runs under seccomp (-sandbox), and not as root when the harness is root."""

import os
import pwd
from pathlib import Path

import pytest

from harness.hosts.local import QEMU_USER
from harness.vm import Vm


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def local_pid(vm: Vm) -> int:
    if not vm.host.is_local:
        pytest.skip(f"QEMU runs on {vm.host.name}; tests/vm/test_remote.py checks it there")
    assert vm.machine.pid is not None
    return vm.machine.pid


def test_qemu_runs_under_a_seccomp_filter_without_new_privileges(vm: Vm) -> None:
    fields = status(local_pid(vm))
    assert fields["Name"].startswith("qemu-system")  # setpriv exec'd QEMU: this is QEMU itself
    assert fields["Seccomp"] == "2", "-sandbox on installs a seccomp filter (mode 2)"
    assert "-sandbox" in vm.machine.args


def test_qemu_does_not_run_as_root_when_the_harness_does(vm: Vm) -> None:
    pid = local_pid(vm)
    if os.geteuid() != 0:
        pytest.skip(f"the harness runs as uid {os.geteuid()}, not root: QEMU runs as the harness's own user")
    real, effective, saved, filesystem = (int(u) for u in status(pid)["Uid"].split())
    expected = pwd.getpwnam(QEMU_USER).pw_uid
    assert real == effective == saved == filesystem == expected != 0
    assert status(pid)["NoNewPrivs"] == "1"
    assert int(status(pid)["CapEff"], 16) == 0, "QEMU holds no capability"
