"""VMs on a remote host over SSH: a real OpenSSH server (ci/sshd), real paramiko, real QEMU over there.

Run with `--vm-host ssh://...` (ci/test does, against ci/sshd's server on 127.0.0.1); without an SSH
host these tests are skipped with the reason. Facts about the remote side (its processes, its files)
are asked over SSH itself, as of any remote machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from harness.build import KernelImage
from harness.config import VmConfig, load_configs
from harness.console import BOOT_COMPLETE
from harness.errors import HostAuthError, HostConnectionLost, HostKeyError
from harness.hosts import VmHost
from harness.hosts.ssh import SshHost
from harness.vm import Vm

pytestmark = pytest.mark.remote


def remote_shell(host: SshHost, command: str) -> str:
    """`command` run by the remote user's shell; its stdout."""
    return host._run(["sh", "-c", command])


def remote_state(host: SshHost, pid: int, runtime_dir: str) -> tuple[bool, bool]:
    """(the process is alive, the directory exists) on the remote host."""
    out = remote_shell(host, f"kill -0 {pid} 2>/dev/null && echo alive || echo gone; "
                             f"test -e {runtime_dir} && echo there || echo absent").split()
    return out[0] == "alive", out[1] == "there"


def drop_connection(host: SshHost) -> str:
    """SIGKILL the sshd process serving this host's connection, from inside the connection; its name."""
    transport = host._transport()
    probe = transport.open_session(timeout=10)
    probe.exec_command("cat /proc/$PPID/comm")  # the login shell's parent is the connection's sshd
    probe.settimeout(10)
    name: str = probe.makefile("rb").read().decode().strip()
    probe.close()
    killer = transport.open_session(timeout=10)
    with contextlib.suppress(EOFError, OSError):  # the connection may end before the server answers
        killer.exec_command("kill -KILL $PPID")
    deadline = time.monotonic() + 10
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    return name


@pytest.fixture(scope="module")
def default_config() -> VmConfig:
    return load_configs()["default"]


@pytest.fixture
def own_host(ssh_host: VmHost) -> Iterator[SshHost]:
    """A host object with a connection of its own (a test may drop it without touching others)."""
    assert isinstance(ssh_host, SshHost)
    host = SshHost(ssh_host.spec)
    yield host
    host.close()


@pytest.fixture(scope="module")
def remote_vm(ssh_host: VmHost, default_config: VmConfig, mmhil_kernel: KernelImage,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    vm = Vm(default_config, kernel=mmhil_kernel, accelerator="tcg", host=ssh_host,
            artifacts=tmp_path_factory.mktemp("remote-vm"))
    with vm:
        yield vm


def test_remote_vm_boots_and_answers_ddi_calls(remote_vm: Vm) -> None:
    assert remote_vm.host.name.startswith("ssh://")
    info = remote_vm.mm.kernel_info()
    va = remote_vm.mm.ExAllocatePoolWithTag(0x200, 4096, "Rmt1")
    assert remote_vm.mm.MmIsAddressValid(va)
    remote_vm.mm.ExFreePoolWithTag(va, "Rmt1")
    assert remote_vm.agent.mailbox is None, "a remote VM's RAM is not mapped here: its agent talks on COM2"
    remote_vm.console.expect(BOOT_COMPLETE, timeout=10)  # printed after the hello: it may still be on its way
    assert re.search(BOOT_COMPLETE, remote_vm.machine.console_log.read_text()), "the console log is kept here"
    assert info.levels == 4


def test_remote_translations_agree_three_ways_over_sftp_and_the_monitor(remote_vm: Vm) -> None:
    info = remote_vm.mm.kernel_info()
    assert remote_vm.verify.remote_memory is not None and remote_vm.verify.shared_memory is None
    assert remote_vm.verify.translate(info.text_start) is not None  # agent == host walk (SFTP) == gva2gpa
    with remote_vm.verify.stopped() as window:
        for va in (info.text_start, info.text_start + 0x1234):
            over_sftp, over_monitor = window.walk(va, "remote"), window.walk(va, "monitor")
            assert over_sftp.pa == over_monitor.pa == remote_vm.verify.gva2gpa(va)
    sample = remote_vm.verify.snapshot(backend="remote").random_vas(300, seed=3)
    assert remote_vm.verify.cross_check_with_qemu(sample) == 300


def test_remote_guest_and_host_see_each_others_writes_through_sftp_and_pmemsave(remote_vm: Vm) -> None:
    va = remote_vm.mm.ExAllocatePoolWithTag(0x200, 3 * 4096, "Rmt2")
    try:
        assert remote_vm.verify.round_trip(va, 3 * 4096 - 64, seed=7) == ("guest->host", "host->guest")
    finally:
        remote_vm.mm.ExFreePoolWithTag(va, "Rmt2")


def test_remote_qemu_runs_sandboxed_without_new_privileges(remote_vm: Vm, ssh_host: SshHost) -> None:
    pid = remote_vm.machine.pid
    status = dict(line.split(":\t", 1) for line in remote_shell(ssh_host, f"cat /proc/{pid}/status").splitlines()
                  if ":\t" in line)
    assert status["Seccomp"].strip() == "2", "QEMU runs under -sandbox (seccomp filter mode)"
    assert remote_shell(ssh_host, f"cat /proc/{pid}/comm").strip().startswith("qemu-system")


def test_dropped_connection_is_infra_and_leaves_no_remote_qemu_or_file(
    own_host: SshHost, ssh_host: SshHost, default_config: VmConfig, mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    vm = Vm(default_config, kernel=mmhil_kernel, accelerator="tcg", host=own_host, artifacts=tmp_path)
    with vm:
        pid, runtime_dir = vm.machine.pid, str(vm.machine.runtime_dir)
        assert pid is not None
        assert remote_state(ssh_host, pid, runtime_dir) == (True, True)
        assert drop_connection(own_host) == "sshd"
        with pytest.raises(HostConnectionLost, match="dropped"):
            vm.mm.kernel_info()
    deadline = time.monotonic() + 15
    while remote_state(ssh_host, pid, runtime_dir) != (False, False) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote_state(ssh_host, pid, runtime_dir) == (False, False), "QEMU and its files die with the channel"
    # The next VM on that host connects again.
    again = Vm(default_config, kernel=mmhil_kernel, accelerator="tcg", host=own_host, artifacts=tmp_path / "again")
    with again:
        assert again.mm.kernel_info().levels == 4


def test_a_sigkilled_harness_leaves_no_qemu_or_file_on_the_remote_host(ssh_host: SshHost, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_boot_child.py")), "default", "tcg",
                              str(tmp_path / "artifacts"), "wait", host_text(ssh_host)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"the child did not boot its VM: {child.stderr.read() if child.stderr else ''}"
        report = json.loads(line)
        assert remote_state(ssh_host, report["qemu_pid"], report["runtime_dir"]) == (True, True)
    finally:
        child.kill()
        child.wait(30)
    deadline = time.monotonic() + 15
    while remote_state(ssh_host, report["qemu_pid"], report["runtime_dir"]) != (False, False) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote_state(ssh_host, report["qemu_pid"], report["runtime_dir"]) == (False, False)


def test_mmhil_hosts_shows_reachability_qemu_and_kvm(ssh_host: SshHost) -> None:
    result = subprocess.run([sys.executable, "-m", "harness.cli", "hosts", "--vm-host", host_text(ssh_host),
                             "--vm-host", f"ssh://nobody@127.0.0.1:{_closed_port()}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, "one host is not usable"
    reachable, unreachable = result.stdout.splitlines()
    assert reachable.startswith(ssh_host.spec.name) and "reachable  QEMU 7." in reachable and "KVM " in reachable
    assert "NOT usable" in unreachable and "Connection refused" in unreachable


def test_bench_verify_on_a_remote_host_reports_every_ram_path(ssh_host: SshHost) -> None:
    result = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "verify", "--vm-host", host_text(ssh_host),
                             "--seconds", "2", "--rounds", "2", "--batch", "2000"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in ("RAM file over SFTP", "monitor (batch)", "monitor xp only", "QEMU gva2gpa"):
        assert path in result.stdout
    assert f"on {ssh_host.spec.name}" in result.stdout and ", 0 disagreeing" in result.stdout


def test_a_host_key_that_differs_from_known_hosts_is_refused_before_anything_runs(
    ssh_host: SshHost, tmp_path: Path
) -> None:
    spec = ssh_host.spec
    if spec.key_file is None:
        pytest.skip("needs the host's spec to name its client key (an ed25519 key that is not the host's)")
    impostor = paramiko.Ed25519Key.from_private_key_file(str(spec.key_file))  # ed25519, like the server's key
    known = tmp_path / "known_hosts"
    known.write_text(f"[{spec.hostname}]:{spec.port} ssh-ed25519 {impostor.get_base64()}\n")
    host = SshHost(dataclasses.replace(spec, known_hosts=known))
    with pytest.raises(HostKeyError, match="differs from the one") as refused:
        host.check()
    assert spec.name in str(refused.value) and "nothing was launched" in str(refused.value)
    # Refused in the key exchange, before authentication: no session could run anything. (The remote
    # runtime root is no witness here: other workers' VMs come and go in it meanwhile.)
    assert isinstance(refused.value.__cause__, paramiko.BadHostKeyException)
    assert not host.transport_active()


def test_an_unknown_host_key_is_refused_unless_trusted_on_first_use(ssh_host: SshHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    strict = SshHost(dataclasses.replace(ssh_host.spec, known_hosts=known))
    with pytest.raises(HostKeyError, match="is not in"):
        strict.check()
    first_use = SshHost(dataclasses.replace(ssh_host.spec, known_hosts=known, trust="first-use"))
    first_use.check()
    first_use.close()
    assert f"[{ssh_host.spec.hostname}]:{ssh_host.spec.port} ssh-ed25519 " in known.read_text()
    strict.check()  # the recorded key now passes the strict check
    strict.close()


def test_a_refused_key_names_the_user_the_host_and_the_key(ssh_host: SshHost, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(stranger))  # paramiko generates RSA keys only
    host = SshHost(dataclasses.replace(ssh_host.spec, key_file=stranger))
    with pytest.raises(HostAuthError) as refused:
        host.check()
    text = str(refused.value)
    assert ssh_host.spec.user in text and ssh_host.spec.hostname in text and str(stranger) in text


# -- through pytest ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_host_skips_its_configs_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_demo="def test_vm(vm):\n    pass\n")
    result = pytester.runpytest_subprocess("--vm-config", "default", "--vm-host", f"ssh://nobody@127.0.0.1:{_closed_port()}",
                                           "-rs", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*cannot connect to 127.0.0.1:*Connection refused*"])


def test_a_malformed_vm_host_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_demo="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("--vm-host", "ssh://kvm1:99999", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vm-host*port 99999 is outside 1-65535*"])


DROP_DEMO = """
import contextlib

ATTEMPTS = [0]

def test_survives_a_dropped_connection(vm):
    ATTEMPTS[0] += 1
    if ATTEMPTS[0] == 1:
        transport = vm.host._transport()
        with contextlib.suppress(EOFError, OSError):  # the connection may end before the server answers
            transport.open_session(timeout=10).exec_command("kill -KILL $PPID")
    assert vm.mm.MmIsAddressValid(vm.mm.kernel_info().text_start)
"""


def test_a_connection_dropped_mid_test_is_an_infra_outcome_retried_once(
    pytester: pytest.Pytester, ssh_host: SshHost
) -> None:
    pytester.makepyfile(test_demo=DROP_DEMO)
    result = pytester.runpytest_subprocess("--vm-config", "default", "--vm-host", host_text(ssh_host),
                                           "-p", "no:cacheprovider", timeout=300)
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    result.stdout.fnmatch_lines(["*mmhil: 1 retried*"])


def host_text(host: SshHost, *extra: str) -> str:
    """The --vm-host value for `host`, with its key and known_hosts, and `extra` options."""
    spec = host.spec
    options = [*([f"key={spec.key_file}"] if spec.key_file else []), f"known_hosts={spec.known_hosts_file}", *extra]
    return f"{spec.name}#{','.join(options)}"


FAN_OUT_DEMO = "def test_{n}(vm):\n    assert vm.mm.kernel_info().levels == 4\n"


def test_workers_are_spread_over_hosts_and_reported_per_host(
    pytester: pytest.Pytester, ssh_host: SshHost, tmp_path: Path
) -> None:
    for module in ("a", "b"):  # two units of work, one per worker
        pytester.makepyfile(**{f"test_{module}": "".join(FAN_OUT_DEMO.format(n=f"{module}{k}") for k in range(3))})
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--vm-config", "default", "--vm-host", "local#cores=1", "--vm-host", host_text(ssh_host, "cores=1"),
        f"--junitxml={junit}", "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*mmhil: VM tests per host*", "local: 3 VM tests (3 passed)*",
                                 f"{ssh_host.spec.name}: 3 VM tests (3 passed)*"])
    hosts = [p.get("value", "") for p in ET.parse(junit).getroot().iter("property") if p.get("name") == "mmhil.host"]
    assert sorted(set(hosts)) == sorted({"local", ssh_host.spec.name}) and len(hosts) == 6
