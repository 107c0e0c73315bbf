"""The pytest plugin, seen from outside: a real inner pytest run that boots a real VM."""

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pexpect
import pytest

from harness.pytest_plugin import artifacts_root

OUTCOMES_DEMO = """
from harness.errors import BugCheckRecord, BugCheck, GuestTimeout, InfrastructureError

ATTEMPTS = {"flaky": 0}

def test_passes(vm):
    assert vm.mm.MmIsAddressValid(vm.mm.kernel_info().text_start)

def test_fails(vm):
    assert vm.mm.MmGetPhysicalAddress(0) == 1

def test_times_out(vm):
    raise GuestTimeout(vm.name, "a reply", 1.0, "", None)

def test_crashes(vm):
    vm.mm.write_va(0xFFFFF98000000000, b"\\x01")

def test_infra_error_passes_on_retry(vm):
    ATTEMPTS["flaky"] += 1
    if ATTEMPTS["flaky"] == 1:
        raise InfrastructureError("transient")

def test_infra_error_twice(vm):
    raise InfrastructureError("persistent")
"""


def test_six_outcomes_stay_distinct_in_summary_and_junit(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_demo=OUTCOMES_DEMO)
    junit = tmp_path / "junit.xml"
    artifacts = tmp_path / "artifacts"
    result = pytester.runpytest_subprocess(
        "--vm-config", "default", f"--junitxml={junit}", f"--vm-artifacts={artifacts}", "-p", "no:cacheprovider",
        timeout=300,
    )
    result.stdout.fnmatch_lines(["*mmhil: 1 timeout, 1 crashed, 1 infra, 2 retried*"])
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed")) == (2, 1), outcomes

    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    def properties(name: str) -> dict[str, str]:
        return {p.get("name", ""): p.get("value", "") for p in cases[name].iter("property")}
    assert properties("test_times_out[default]")["mmhil.outcome"] == "timeout"
    assert properties("test_crashes[default]")["mmhil.outcome"] == "crashed"
    assert properties("test_infra_error_twice[default]")["mmhil.outcome"] == "infra"
    assert "mmhil.outcome" not in properties("test_fails[default]")
    passed = properties("test_passes[default]")
    assert passed["mmhil.config"] == "default" and passed["mmhil.accelerator"] == "tcg"
    assert passed["mmhil.kernel_build"] and passed["mmhil.qemu"]

    # Under the path of the worker the inner run believes it is (inherited under xdist), or "main".
    (failure,) = [p for p in artifacts.glob("*/default/failures/*") if p.name == "test_fails[default]"]
    for name in ("console.log", "qmp.log", "agent.log", "qemu-stderr.log", "page-tables.txt", "registers.txt",
                 "repro.sh"):
        assert (failure / name).is_file(), f"{name} missing from {failure}"
    assert "0xfffff80000" in (failure / "page-tables.txt").read_text(), "the dump lists the kernel image"
    registers = (failure / "registers.txt").read_text()
    assert re.search(r"^CPU#0", registers, re.M) and "RIP=" in registers and "CR3=" in registers, registers[:300]
    assert "qemu-system-x86_64" in (failure / "repro.sh").read_text()


def test_a_nested_run_keeps_its_artifacts_apart_from_the_run_around_it(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A nested run inherits PYTEST_XDIST_WORKER from the worker that starts it; once, it took that
    # worker's name and cleared the outer run's artifacts folder under a live VM.
    probe = "gw-nested-probe"
    kept = artifacts_root(request.config) / probe / "kept"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text("the outer run's\n")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", probe)
    pytester.makepyfile(test_demo="def test_vm(vm):\n    assert vm.mm.kernel_info().levels == 4\n")
    try:
        result = pytester.runpytest_subprocess("--vm-config", "default", "-p", "no:cacheprovider", timeout=300)
        result.assert_outcomes(passed=1)
        assert kept.exists(), "the nested run cleared the outer run's artifacts"
        assert (pytester.path / "artifacts" / "main" / "default" / "boot-1" / "console.log").exists()
    finally:
        shutil.rmtree(kept.parent, ignore_errors=True)


def test_shards_deal_out_configs_and_keep_unit_tests_in_shard_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_demo="def test_vm(vm): pass\ndef test_plain(): pass\n")
    seen = []
    for shard in ("1/2", "2/2"):
        result = pytester.runpytest_subprocess("--collect-only", "-q", "--shard", shard, "-p", "no:cacheprovider")
        seen.append({line for line in result.outlines if "::" in line})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert "test_demo.py::test_plain" in seen[0]
    everything = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert seen[0] | seen[1] == {line for line in everything.outlines if "::" in line}


def test_bad_shard_spec_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_demo="def test_plain(): pass\n")
    result = pytester.runpytest_subprocess("--shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--shard takes I/N*"])


def test_a_module_that_fails_to_import_is_a_collection_error_not_a_plugin_crash(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_demo="import no_such_module_anywhere\ndef test_vm(vm): pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ModuleNotFoundError*no_such_module_anywhere*", "*1 error*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_gdb_option_waits_for_the_debugger_and_runs_once_it_detaches(pytester: pytest.Pytester) -> None:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed (ci/setup installs it)")
    pytester.makepyfile(test_demo="def test_vm(vm):\n    assert vm.mm.kernel_info().levels == 4\n")
    run = pexpect.spawn(sys.executable, ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "--gdb",
                                         "--vm-config", "default", "-p", "no:xdist"],
                        cwd=str(pytester.path), encoding="utf-8", timeout=120)
    try:
        run.expect(r"gdb (\S+) -ex 'set architecture i386:x86-64' -ex 'target remote (\S+)'")
        kernel, socket_path = run.match.group(1), run.match.group(2)
        # The VM is stopped before its first instruction: gdb sees the PVH entry point's registers.
        attach = subprocess.run(
            [gdb, "-batch", "-nx", kernel, "-ex", "set architecture i386:x86-64",
             "-ex", f"target remote {socket_path}", "-ex", "info registers rip", "-ex", "detach"],
            capture_output=True, text=True, timeout=60,
        )
        assert "rip" in attach.stdout, attach.stdout + attach.stderr
        run.expect(r"1 passed")
        run.expect(pexpect.EOF)
    finally:
        run.close(force=True)


LEAK_DEMO = """
def test_leaks_pool(vm):
    vm.mm.ExAllocatePoolWithTag(512, 100, "Leak")
    pytest_vm_pids.append(vm.machine.pid)

def test_leaves_irql_raised(vm):
    vm.mm.KeRaiseIrql(2)
    pytest_vm_pids.append(vm.machine.pid)

def test_after_leaks_gets_a_clean_vm(vm):
    pytest_vm_pids.append(vm.machine.pid)
    assert len(set(pytest_vm_pids)) == 3, "each leaking test's VM was discarded"
    assert vm.mm.outstanding()["pool_bytes"] == 0
    assert vm.mm.KeGetCurrentIrql() == 0

pytest_vm_pids = []
"""


def test_a_test_that_leaks_kernel_objects_fails_and_the_next_gets_a_clean_vm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAK_DEMO)
    result = pytester.runpytest_subprocess("--vm-config", "default", "-p", "no:cacheprovider",
                                           timeout=300)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_pool*",
        "*the test left kernel state behind*",
        "*pool_tag_6b61654c: 0 -> 112*",
        "*ERROR at teardown of test_leaves_irql_raised*",
        "*IRQL left at 2*",
    ])
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors")) == (3, 2), outcomes
