"""The fault matrix (docs/faults.md): each fault injected for real, in an inner pytest session that
boots real VMs, then checked four ways:

1. the outcome class as pytest's JUnit XML reports it (`mmhil.outcome`);
2. the logs are there and hold what explains the fault;
3. no QEMU survives (by PID, and by a scan for the run's unique artifacts path), no runtime
   directory, no /dev/shm file;
4. the next test on the same worker passes.

The guest side of the faults is a set of test hooks (driver_src/agent/cmd_fault_hook.c).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _processes import processes_mentioning, wait_gone

from harness.build import KERNEL, KernelImage
from harness.console import BOOT_COMPLETE

UNMAPPED_SYSTEM_VA = 0xFFFF_F980_0000_0018
SEED = 0x6D6D_6869_6C21  # any nonzero seed: the host computes the same bytes as the guest's hook

FAULT_NOTES = '''
"""Inner sessions of tests/vm/test_faults.py note here what the outer test checks afterwards."""
import json
import os


def note(**fields):
    with open(os.environ["MMHIL_FAULT_NOTES"], "a") as f:
        f.write(json.dumps(fields) + "\\n")


def note_vm(vm, test):
    note(test=test, qemu_pid=vm.machine.pid, runtime_dir=str(vm.machine.runtime_dir), harness_pid=os.getpid(),
         worker=os.environ.get("PYTEST_XDIST_WORKER", "main"))
'''

NEXT_TEST = '''

def test_next(vm):
    note_vm(vm, "next")
    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)
'''


def garbage(count: int, seed: int = SEED) -> bytes:
    """The bytes the guest's garbage hooks write: xorshift64 (13, 7, 17), bits 32..39 of each step."""
    out = bytearray()
    x = seed
    mask = (1 << 64) - 1
    for _ in range(count):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        out.append((x >> 32) & 0xFF)
    return bytes(out)


@dataclass
class InnerRun:
    ret: int
    output: str
    cases: dict[str, tuple[str, dict[str, str]]]  # test name: (passed/failed/error/skipped, properties)
    notes: list[dict[str, Any]]
    artifacts: Path
    runtime_root: Path

    def status(self, test: str) -> str:
        return self.cases[test][0]

    def outcome(self, test: str) -> str | None:
        return self.cases[test][1].get("mmhil.outcome")

    def vms(self, test: str) -> list[dict[str, Any]]:
        return [n for n in self.notes if n.get("test") == test]

    def failure(self, test: str, worker: str = "main", config: str = "default") -> Path:
        folder = self.artifacts / worker / config / "failures" / f"{test}[{config}]"
        assert folder.is_dir(), f"no failure folder {folder}:\n{self.output[-3000:]}"
        return folder

    def assert_nothing_left(self) -> None:
        for vm in self.notes:
            if "qemu_pid" in vm:
                assert wait_gone(vm["qemu_pid"], 15), f"QEMU {vm['qemu_pid']} outlived the session"
        assert processes_mentioning(str(self.artifacts)) == [], "a process of the session survived it"
        root = self.runtime_root / "mmhil-runtime"
        assert not root.exists() or list(root.iterdir()) == [], f"left in {root}: {list(root.iterdir())}"
        harnesses = {vm["harness_pid"] for vm in self.notes if "harness_pid" in vm}
        assert harnesses, "the session noted no VM"
        for pid in harnesses:
            assert list(Path("/dev/shm").glob(f"mmhil-{pid}-*")) == []

    def assert_next_passed_on_a_fresh_vm(self, worker: str = "main") -> None:
        assert self.status("test_next[default]") == "passed", self.output[-3000:]
        (fault, *_), (after,) = self.vms("fault"), self.vms("next")
        assert after["worker"] == worker
        assert after["qemu_pid"] not in {vm["qemu_pid"] for vm in self.vms("fault")}, "the faulty VM was reused"
        if worker == "main":
            assert after["harness_pid"] == fault["harness_pid"], "the next test ran in the same process"


class Session:
    """Runs inner pytest sessions in a pytester directory, each with its own runtime dir and notes."""

    def __init__(self, pytester: pytest.Pytester, tmp_path: Path, runtime: Path) -> None:
        self.path = pytester.path
        self.tmp = tmp_path
        self.runtime = runtime
        (self.path / "fault_notes.py").write_text(FAULT_NOTES)
        self.runs = 0

    def write(self, **modules: str) -> None:
        for name, source in modules.items():
            (self.path / f"{name}.py").write_text(source)

    def command(self, *args: str) -> tuple[list[str], dict[str, str], Path, Path]:
        self.runs += 1
        junit = self.tmp / f"junit-{self.runs}.xml"
        artifacts = Path(os.environ.get("MMHIL_FAULT_ARTIFACTS", self.tmp / "artifacts"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(XDG_RUNTIME_DIR=str(self.runtime), MMHIL_FAULT_NOTES=str(self.tmp / "notes.jsonl"))
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--vm-config", "default", "-rfEs",
                f"--junitxml={junit}", f"--vm-artifacts={artifacts}", *args]
        return argv, env, junit, artifacts

    def finish(self, ret: int, output: str, junit: Path, artifacts: Path) -> InnerRun:
        cases: dict[str, tuple[str, dict[str, str]]] = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                status = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
                properties = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
                cases[case.get("name", "")] = ("failed" if status == "failure" else status, properties)
        notes_file = self.tmp / "notes.jsonl"
        notes = [json.loads(line) for line in notes_file.read_text().splitlines()] if notes_file.exists() else []
        return InnerRun(ret, output, cases, notes, artifacts, self.runtime)

    def run(self, *args: str, timeout: float = 300) -> InnerRun:
        argv, env, junit, artifacts = self.command(*args)
        done = subprocess.run(argv, cwd=self.path, env=env, capture_output=True, text=True, timeout=timeout)
        return self.finish(done.returncode, done.stdout + done.stderr, junit, artifacts)

    def start(self, *args: str) -> tuple[subprocess.Popen[str], Path, Path]:
        """A session to interrupt: SIGINT as a terminal delivers it (not ignored, as in a background job)."""
        argv, env, junit, artifacts = self.command(*args)
        child = subprocess.Popen(argv, cwd=self.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        return child, junit, artifacts

    def wait_note(self, key: str, seconds: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        notes_file = self.tmp / "notes.jsonl"
        while time.monotonic() < deadline:
            if notes_file.exists():
                for line in notes_file.read_text().splitlines():
                    if key in json.loads(line):
                        return dict(json.loads(line))
            time.sleep(0.05)
        raise AssertionError(f"the session never noted {key!r}")


@pytest.fixture
def session(pytester: pytest.Pytester, tmp_path: Path, mmhil_kernel: KernelImage) -> Iterator[Session]:
    # Not under tmp_path: pytest makes its base temp dir 0700, and when the harness runs as root QEMU
    # runs as mmhil-qemu, which must traverse every parent of its runtime dir.
    runtime = Path(tempfile.mkdtemp(prefix="mmhil-faults-runtime-"))
    runtime.chmod(0o711)
    try:
        yield Session(pytester, tmp_path, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def gdb_batch(core: Path, *commands: str) -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed (ci/setup installs it)")
    args = [gdb, "-batch", "-nx", str(KERNEL), str(core)]
    for command in commands:
        args += ["-ex", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def assert_core_is_the_guests(folder: Path) -> Path:
    core = folder / "core.elf"
    assert core.is_file() and core.read_bytes()[:4] == b"\x7fELF", f"no ELF core in {folder}"
    repro = (folder / "repro.sh").read_text()
    assert "core.elf" in repro and f"gdb {KERNEL} core.elf" in repro, "repro.sh says how to open the core"
    assert f"core: {core} (" in (folder / "report.txt").read_text(), "the report names the core"
    return core


# -- the guest -------------------------------------------------------------------------------------


def test_fault_guest_hang_is_timeout_with_a_core_where_it_hangs(session: Session) -> None:
    session.write(test_hang='''
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    vm.request("test_hook_hang", timeout=3.0)
''' + NEXT_TEST)
    run = session.run()
    assert run.outcome("test_fault[default]") == "timeout", run.output[-3000:]
    folder = run.failure("test_fault")
    assert "timed out after 3 s waiting for the answer to test_hook_hang" in (folder / "report.txt").read_text()
    assert "test hook: hanging with interrupts off" in (folder / "console.log").read_text()
    assert " test_hook_hang" in (folder / "agent.log").read_text()
    core = assert_core_is_the_guests(folder)
    # The core shows where the guest is stuck: the hook's halt loop.
    assert "hang (" in gdb_batch(core, "bt"), "the backtrace of the hung vCPU goes through the hang hook"
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_bugcheck_is_crashed_with_a_core_gdb_reads(session: Session) -> None:
    session.write(test_bugcheck=f'''
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    vm.mm.write_va({UNMAPPED_SYSTEM_VA:#x}, b"\\x01")
''' + NEXT_TEST)
    run = session.run()
    assert run.outcome("test_fault[default]") == "crashed", run.output[-3000:]
    folder = run.failure("test_fault")
    assert "*** STOP: 0x00000050" in (folder / "report.txt").read_text()
    assert "*** STOP: 0x00000050" in (folder / "console.log").read_text()
    assert "!bugcheck code=0x50" in (folder / "agent.log").read_text()
    assert '"event": "GUEST_PANICKED"' in (folder / "qmp.log").read_text(), "QEMU paused for the dump"
    core = assert_core_is_the_guests(folder)
    # Values only the guest's memory at the crash holds: the stop record (on the kernel stack) and the
    # command line the boot stub copied (.bss: the ELF file has no contents for it).
    shown = gdb_batch(core, "print/x first_stop->code", "print/x first_stop->parameters[0]",
                      "print boot_info.cmdline")
    assert "$1 = 0x50" in shown and f"$2 = {UNMAPPED_SYSTEM_VA:#x}" in shown, shown
    assert '$3 = "paging=4 hello=mailbox"' in shown, shown
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_triple_fault_is_crashed_with_a_core(session: Session) -> None:
    session.write(test_triple=('''
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    vm.request("test_hook_triple_fault")
''' + NEXT_TEST))
    run = session.run()
    assert run.outcome("test_fault[default]") == "crashed", run.output[-3000:]
    folder = run.failure("test_fault")
    assert "the guest reset (QEMU reported a guest reset)" in (folder / "report.txt").read_text()
    assert "test hook: triple fault" in (folder / "console.log").read_text()
    assert '"reason": "guest-reset"' in (folder / "qmp.log").read_text()
    core = assert_core_is_the_guests(folder)
    assert "triple_fault (" in gdb_batch(core, "bt"), "the vCPU stopped on the hook's faulting instruction"
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_console_garbage_passes_and_the_log_keeps_it(session: Session) -> None:
    session.write(test_console=f'''
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    assert vm.request("test_hook_console_garbage", 4096, {SEED:#x})["written"] == 4096
    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)

def test_next(vm):
    note_vm(vm, "next")
    assert vm.mm.kernel_info().levels == 4
''')
    run = session.run()
    assert (run.status("test_fault[default]"), run.outcome("test_fault[default]")) == ("passed", None), run.output
    assert run.status("test_next[default]") == "passed"
    (fault,), (after,) = run.vms("fault"), run.vms("next")
    assert after["qemu_pid"] == fault["qemu_pid"], "garbage on the console costs no VM"
    console = (run.artifacts / "main/default/boot-1/console.log").read_bytes()
    assert garbage(4096) in console, "the console log holds every byte the guest wrote"
    run.assert_nothing_left()


def test_fault_garbage_from_the_agent_is_infra(session: Session) -> None:
    session.write(test_agent_garbage=f'''
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    vm.request("test_hook_agent_garbage", 256, {SEED:#x})
''' + NEXT_TEST)
    run = session.run()
    assert run.outcome("test_fault[default]") == "infra", run.output[-3000:]
    assert "1 infra, 1 retried" in run.output, "retried once on a fresh VM, as every INFRA outcome"
    assert len(run.vms("fault")) == 2
    folder = run.failure("test_fault")
    assert "bad frame from the agent" in (folder / "report.txt").read_text()
    assert "pseudo-random bytes and a newline on the agent channel" in (folder / "console.log").read_text()
    # The transcript keeps bad input as readable text (backslash escapes), cut at 512 characters a line.
    escaped = garbage(256).decode("ascii", errors="backslashreplace")
    assert f" < {escaped[:200]}" in (folder / "agent.log").read_text(), "the transcript holds the garbage"
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_garbage_to_the_agent_is_answered_and_the_agent_serves_on(session: Session) -> None:
    session.write(test_agent_input=f'''
import random
from harness.agent.codec import Response
from fault_notes import note_vm

SYNC_ID = 4_000_000_000

def test_fault(vm):
    note_vm(vm, "fault")
    junk = bytes(random.Random({SEED}).randrange(256) for _ in range(8192))
    vm.agent.send_raw(junk + f"\\n{{SYNC_ID}} hello\\n".encode(), vm.timeout)
    answers = []
    while not answers or answers[-1].request_id != SYNC_ID:
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response), frame
        answers.append(frame)
    assert len(answers) == junk.count(b"\\n") + 2, "every line got exactly one answer"
    assert all(not a.ok for a in answers[:-1]) and answers[-1].ok
    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)

def test_next(vm):
    note_vm(vm, "next")
    assert vm.mm.kernel_info().levels == 4
''')
    run = session.run()
    assert run.status("test_fault[default]") == "passed", run.output[-3000:]
    assert run.status("test_next[default]") == "passed"
    (fault,), (after,) = run.vms("fault"), run.vms("next")
    assert after["qemu_pid"] == fault["qemu_pid"], "the agent survives any input: the VM is kept"
    assert "=? err malformed" in (run.artifacts / "main/default/boot-1/agent.log").read_text()
    run.assert_nothing_left()


# -- QEMU and its channels -------------------------------------------------------------------------


def test_fault_qemu_killed_with_sigkill_is_infra(session: Session) -> None:
    session.write(test_qemu_kill='''
import os
import signal
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    start = vm.mm.kernel_info().text_start
    os.kill(vm.machine.pid, signal.SIGKILL)
    vm.mm.MmGetPhysicalAddress(start)
''' + NEXT_TEST)
    run = session.run()
    assert run.outcome("test_fault[default]") == "infra", run.output[-3000:]
    assert "1 infra, 1 retried" in run.output
    folder = run.failure("test_fault")
    report = (folder / "report.txt").read_text()
    assert "QEMU went away while the VM was in use (killed by signal 9)" in report
    assert re.search(BOOT_COMPLETE, (folder / "console.log").read_text()), "the console log survives QEMU"
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_qmp_socket_closed_under_the_harness_is_infra(session: Session) -> None:
    session.write(test_qmp_closed='''
import socket
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    start = vm.mm.kernel_info().text_start
    vm.machine.qmp.transport_socket.shutdown(socket.SHUT_RDWR)
    vm.qemu.gva2gpa(start)
''' + NEXT_TEST)
    run = session.run()
    assert run.outcome("test_fault[default]") == "infra", run.output[-3000:]
    assert "1 infra, 1 retried" in run.output
    folder = run.failure("test_fault")
    assert "QMP human-monitor-command failed" in (folder / "report.txt").read_text()
    assert '"execute": "human-monitor-command"' in (folder / "qmp.log").read_text().splitlines()[-1] or \
        "error" in (folder / "qmp.log").read_text().splitlines()[-1], "the QMP log ends with the failed command"
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()


def test_fault_qemu_failing_to_start_on_a_bad_option_is_infra(session: Session) -> None:
    default = (KERNEL.parent.parent / "default.toml").read_text()
    (session.path / "broken.toml").write_text(default + 'extra_args = ["-no-such-option"]\n')
    session.write(test_a_broken='''
from pathlib import Path
import pytest
from harness.config import load_config

@pytest.fixture
def vm_config():
    return load_config(Path(__file__).with_name("broken.toml"))

def test_fault(vm):
    raise AssertionError("a VM with a bad option never boots")

def test_fault_again(vm):
    raise AssertionError("the config's later tests are skipped")
''', test_b_next='from fault_notes import note_vm\n' + NEXT_TEST)
    run = session.run()
    assert (run.status("test_fault[default]"), run.outcome("test_fault[default]")) == ("error", "infra"), run.output
    assert "retried" not in run.output, "a config QEMU rejects is not booted again"
    assert "-no-such-option: invalid option" in run.output and "broken.toml" in run.output
    assert "command line: " in run.output and "-no-such-option" in run.output
    assert run.status("test_fault_again[default]") == "skipped"
    assert "VM broken failed to come up earlier in this run" in run.output
    assert run.status("test_next[default]") == "passed"
    run.assert_nothing_left()


# -- pytest itself ---------------------------------------------------------------------------------


INTERRUPTED = '''
from fault_notes import note, note_vm

def test_before(vm):
    note_vm(vm, "before")

def test_interrupted(vm):
    note_vm(vm, "fault")
    note(waiting=True)
    vm.request("test_hook_hang", timeout=600.0)  # the outer test interrupts this wait
'''


def _interrupt(session: Session, twice: bool) -> InnerRun:
    session.write(test_interrupt=INTERRUPTED)
    child, junit, artifacts = session.start()
    try:
        vm = session.wait_note("waiting")
        vm = next(n for n in session.finish(0, "", junit, artifacts).notes if n.get("test") == "fault")
        time.sleep(0.5)  # let the hang request reach the guest
        if twice:
            # A QEMU that does not answer keeps the harness in its shutdown (QMP quit, then a 5 s wait):
            # the second Ctrl-C lands there, as an impatient person's would.
            os.kill(vm["qemu_pid"], signal.SIGSTOP)
        child.send_signal(signal.SIGINT)
        if twice:
            qmp_log = artifacts / "main/default/boot-1/qmp.log"
            deadline = time.monotonic() + 30
            while '"execute": "quit"' not in qmp_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert '"execute": "quit"' in qmp_log.read_text(), "the harness did not start shutting QEMU down"
            child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    return session.finish(child.returncode, output, junit, artifacts)


def _check_interrupted(session: Session, run: InnerRun) -> None:
    assert run.ret == pytest.ExitCode.INTERRUPTED, run.output[-3000:]
    assert "KeyboardInterrupt" in run.output
    assert run.status("test_before[default]") == "passed", "finished tests keep their outcome"
    assert "test_interrupted[default]" not in run.cases, "the interrupted test has no outcome"
    assert "test hook: hanging" in (run.artifacts / "main/default/boot-1/console.log").read_text()
    run.assert_nothing_left()
    # The next session, on the same artifacts, finds nothing in its way.
    session.write(test_interrupt='from fault_notes import note_vm\n' + NEXT_TEST)
    after = session.run()
    assert after.status("test_next[default]") == "passed", after.output[-3000:]
    after.assert_nothing_left()


def test_fault_ctrl_c_once_interrupts_and_leaves_nothing(session: Session) -> None:
    _check_interrupted(session, _interrupt(session, twice=False))


def test_fault_ctrl_c_twice_interrupts_and_leaves_nothing(session: Session) -> None:
    run = _interrupt(session, twice=True)
    assert "mmhil: Ctrl-C again: killing 1 QEMU process(es) at once, then cleaning up" in run.output
    assert "Traceback" not in run.output, "the second Ctrl-C does not cut the cleanup short"
    _check_interrupted(session, run)


def test_fault_xdist_worker_killed_with_sigkill_is_infra_retried_once(session: Session) -> None:
    session.write(test_worker_kill='''
import os
import signal
from fault_notes import note_vm

def test_fault(vm):
    note_vm(vm, "fault")
    os.kill(os.getpid(), signal.SIGKILL)
''' + NEXT_TEST)
    run = session.run("-n", "1")
    assert (run.status("test_fault[default]"), run.outcome("test_fault[default]")) == ("error", "infra"), \
        run.output[-3000:]
    assert "crashed while running" in run.output and "1 infra, 1 retried" in run.output
    killed = run.vms("fault")
    assert len(killed) == 2 and killed[0]["harness_pid"] != killed[1]["harness_pid"], "retried on a new worker"
    (after,) = run.vms("next")
    assert after["harness_pid"] not in {vm["harness_pid"] for vm in killed}
    assert run.status("test_next[default]") == "passed", "the next test runs on the replacement worker"
    for vm in killed:  # what the killed workers' VMs logged is kept
        boot = run.artifacts / vm["worker"] / "default" / "boot-1"
        assert re.search(BOOT_COMPLETE, (boot / "console.log").read_text())
    run.assert_nothing_left()


# -- the host ----------------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the artifacts, to fill up."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the artifacts needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_fault_artifacts_disk_full_is_infra_naming_the_path(
    session: Session, small_filesystem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = small_filesystem / "artifacts"
    filler = small_filesystem / "filler"
    monkeypatch.setenv("MMHIL_FAULT_ARTIFACTS", str(artifacts))
    session.write(test_disk_full=f'''
import os
from fault_notes import note_vm

def fill(path):
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass

def test_fault(vm):
    note_vm(vm, "fault")
    fill({str(filler)!r})
    for _ in range(1000):  # the logs fill the pages they already have, then have nowhere to go
        vm.mm.kernel_info()

def test_next(vm_config, request):
    os.remove({str(filler)!r})
    vm = request.getfixturevalue("vm")
    note_vm(vm, "next")
    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)
''')
    run = session.run()
    assert run.outcome("test_fault[default]") == "infra", run.output[-3000:]
    assert "1 infra, 1 retried" in run.output
    # The first attempt fills the disk under a running VM: its line names where the space ran out.
    boot = artifacts / "main" / "default" / "boot-1"
    assert f"RETRIED test_disk_full.py::test_fault[default] - OSError: [Errno 28] No space left on device " \
           f"(no space left for the artifacts at {boot}: 0 bytes free)" in run.output, run.output[-3000:]
    # The retry is refused before it boots, with the path.
    assert f"no space for VM logs: the file system of {artifacts / 'main'} has 0 bytes free" in run.output
    run.assert_nothing_left()
    run.assert_next_passed_on_a_fresh_vm()
