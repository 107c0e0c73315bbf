"""pytest plugin: booted-VM fixtures over a matrix of VM configurations.

A test that takes the `vm` fixture runs once per selected config (`test_x[la57]`). Within a worker
a VM is booted once per config and reused by the next test, unless a test failed on it or the guest
stopped, in which case the next test gets a fresh VM. A config this host cannot run is skipped with
the probe's reason; a config whose VM failed to come up skips its remaining tests instead of letting
each of them time out.

Tests run grouped by config; under pytest-xdist (`-n`) a module's tests on one config go to one
worker (harness.xdist_scheduling), and a worker keeps a single VM running. After each test the `vm`
fixture compares the kernel's outstanding objects with what it found before, and the page tables
as the host walks them (harness.pagetable_guard): a test that leaks pool, PTEs, MDLs, a raised IRQL
or a mapping in a region it must restore fails, and the VM is discarded.

Outcomes: besides pass, fail and skip, a VM test can end as TIMEOUT (GuestTimeout), CRASHED (an
uncaught BugCheck or reset) or INFRA (InfrastructureError: QEMU died, refused to start, a full
disk for the artifacts, a killed xdist worker...). They are counted apart in the terminal summary
and carried in JUnit XML as the property `mmhil.outcome`, next to `mmhil.config`,
`mmhil.accelerator`, `mmhil.qemu` and `mmhil.kernel_build`. An INFRA outcome is retried once on a
fresh VM (or worker); a failure never is, nor a VM that failed to come up (its boot was retried).
docs/faults.md has the table of faults and outcomes.

Each failing VM test gets a folder in the artifacts with the console, QMP and agent logs, QEMU's
stderr, the report, a page-table dump and the test's page-table diff, every vCPU's `info registers`,
`repro.sh`, which starts the same VM by hand, and for a CRASHED or TIMEOUT outcome the guest's ELF
core (harness.coredump).

VM hosts (harness.hosts, docs/hosts.md): --vm-host local|ssh://user@host[:port][#cores=N,...]
(repeatable) runs the VMs there; under -n the workers are spread over the hosts by their cores, and
each VM test records `mmhil.host`. Tests marked `remote` need an SSH host among them and are skipped
with the reason otherwise.

Options: --vm-config NAME (repeatable; NAME may be group:G), --vm-accel tcg|kvm|auto, --vm-host,
--vm-artifacts DIR, --shard I/N, --gdb. Markers:
@pytest.mark.requires("la57", memory_gib=6, paging=5, accelerator="tcg", smp=2, firmware="mmhil"),
@pytest.mark.remote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from harness.build import KernelImage, build_kernel
from harness.config import VmConfig, load_configs, select_configs
from harness.coredump import CORE_NAME, CoreDump
from harness.errors import ConfigError, GuestCrash, GuestTimeout, HostError, InfrastructureError, MmhilError
from harness.hosts import LOCAL, HostSpec, VmHost, close_hosts, get_host, parse_host_spec
from harness.machine import live_machines, sweep_stale_runtime_dirs
from harness.pagetable_guard import PageTableChanges, PageTableGuard
from harness.probe import probe
from harness.vm import Vm

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_OUTCOME = "mmhil.outcome"
# Free space the artifacts need before a VM boots: its logs, and the failure folders of its tests.
ARTIFACTS_MIN_FREE = 4 << 20
# category, short letter, verbose word: how pytest shows each outcome of ours.
_STATUS = {
    "timeout": ("timeout", "T", "TIMEOUT"),
    "crashed": ("crashed", "C", "CRASHED"),
    "infra": ("infra", "I", "INFRA"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmhil", "mmhil VM tests")
    group.addoption("--vm-config", action="append", default=[], metavar="NAME",
                    help="VM config to run VM tests on (repeatable, or comma-separated; group:G selects a "
                         "group). Default: every config in vm_images/.")
    group.addoption("--vm-accel", choices=("tcg", "kvm", "auto"), default=None,
                    help="override every selected config's accelerator")
    group.addoption("--vm-artifacts", default=None, metavar="DIR",
                    help="where VM logs go (default: artifacts/ under pytest's rootdir)")
    group.addoption("--shard", default=None, metavar="I/N",
                    help="run shard I of N: configs are dealt out round-robin, tests without a VM go to shard 1")
    group.addoption("--gdb", action="store_true",
                    help="start each VM with QEMU's gdbstub, wait for gdb to resume it, and disable timeouts")
    group.addoption("--vm-host", action="append", default=[], metavar="HOST",
                    help="where VMs run: local or ssh://[user@]host[:port][#cores=N,key=FILE,known_hosts=FILE,"
                         "trust=first-use] (repeatable: -n workers are spread over the hosts by cores). "
                         "Default: each config's `host`, else local.")


_HOSTS = pytest.StashKey[list[HostSpec]]()


def run_hosts(config: pytest.Config) -> list[HostSpec]:
    """The hosts given with --vm-host, parsed (empty: each config's own host, else local)."""
    return config.stash.get(_HOSTS, [])


def _parse_hosts(config: pytest.Config) -> list[HostSpec]:
    try:
        specs = [parse_host_spec(value) for value in config.getoption("--vm-host")]
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if len({spec.name for spec in specs}) != len(specs):
        raise pytest.UsageError(f"--vm-host names a host twice: {', '.join(s.name for s in specs)}")
    return specs


def spread(capacities: list[int], count: int) -> list[int]:
    """Which host each of `count` workers gets: in proportion to capacities, smoothly interleaved
    (weights 1:1 give a, b, a, b; 2:1 give a, b, a), so any prefix of the workers is spread fairly."""
    credit = [0] * len(capacities)
    total = sum(capacities)
    out = []
    for _ in range(count):
        credit = [c + w for c, w in zip(credit, capacities, strict=True)]
        best = max(range(len(credit)), key=lambda i: credit[i])
        credit[best] -= total
        out.append(best)
    return out


def _capacity(spec: HostSpec) -> int:
    if spec.cores is not None:
        return spec.cores
    try:
        return get_host(spec).core_count()
    except (HostError, InfrastructureError):
        return 1  # its workers find out why and skip its configs with the reason


_ASSIGNED = pytest.StashKey[list[int]]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: give each new worker its VM host, in proportion to the hosts' cores."""
    specs = run_hosts(node.config)
    if not specs:
        return
    assigned = node.config.stash.setdefault(_ASSIGNED, [])
    capacities = [_capacity(spec) for spec in specs]
    index = spread(capacities, len(assigned) + 1)[-1]
    assigned.append(index)
    node.workerinput["mmhil_vm_host"] = specs[index].name + _spec_options(specs[index])


def _spec_options(spec: HostSpec) -> str:
    options = [f"cores={spec.cores}"] if spec.cores else []
    if spec.key_file:
        options.append(f"key={spec.key_file}")
    if spec.known_hosts:
        options.append(f"known_hosts={spec.known_hosts}")
    if spec.trust != "known-hosts":
        options.append(f"trust={spec.trust}")
    return "#" + ",".join(options) if options else ""


def worker_host(config: pytest.Config) -> HostSpec | None:
    """This process's VM host under --vm-host: the one the controller assigned, or the first."""
    assigned = getattr(config, "workerinput", {}).get("mmhil_vm_host")
    if assigned:
        return parse_host_spec(assigned)
    specs = run_hosts(config)
    return specs[0] if specs else None


def _shard(config: pytest.Config) -> tuple[int, int] | None:
    value = config.getoption("--shard")
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", value)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise pytest.UsageError(f"--shard takes I/N with 1 <= I <= N, not {value!r}")
    return int(match.group(1)), int(match.group(2))


def _dist_chosen(config: pytest.Config) -> bool:
    args = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return any(str(a) == "--dist" or str(a).startswith("--dist=") for a in args)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With -n, a module's tests on one config share a worker and its booted VM
    (harness.xdist_scheduling), unless --dist chose another mode explicitly."""
    if config.getvalue("dist") != "load" or _dist_chosen(config):
        return None
    from harness.xdist_scheduling import ConfigScheduling

    return ConfigScheduling(config, log, {c.name for c in _selected_configs(config)})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: the test runs on a VM (set by mmhil for every VM test)")
    config.addinivalue_line(
        "markers",
        "requires(*cpu_features, memory_gib=0, paging=None, accelerator=None, smp=1, firmware=None): run "
        "only on VM configs that provide these",
    )
    config.addinivalue_line("markers", "remote: the test needs an SSH VM host among --vm-host (else skipped)")
    _shard(config)
    if config.getoption("--gdb") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--gdb needs a single process: drop -n")
    config.stash[_HOSTS] = _parse_hosts(config)
    if config.getoption("--gdb") and any(spec.kind != "local" for spec in run_hosts(config)):
        raise pytest.UsageError("--gdb needs QEMU on this machine: drop the ssh:// --vm-host")


def pytest_unconfigure(config: pytest.Config) -> None:
    close_hosts()


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
    smp = marker.kwargs.get("smp", 1)
    if vm_config.smp < smp:
        return f"needs {smp} vCPUs; config {vm_config.name} has {vm_config.smp}"
    firmware = marker.kwargs.get("firmware")
    if firmware is not None and vm_config.firmware != firmware:
        return f"needs the {firmware} firmware; config {vm_config.name} boots {vm_config.firmware!r}"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vm_config" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("requires")
    params = []
    for vm_config in _selected_configs(metafunc.config):
        reason = _unmet(vm_config, marker)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        marks.append(pytest.mark.vm)
        params.append(pytest.param(vm_config, id=vm_config.name, marks=marks))
    metafunc.parametrize("vm_config", params, indirect=True)


def _config_of(item: pytest.Item) -> VmConfig | None:
    callspec = getattr(item, "callspec", None)
    config = callspec.params.get("vm_config") if callspec else None
    return config if isinstance(config, VmConfig) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run a config's tests back to back (one VM busy, not many rebooting); keep only this shard's.

    KVM configs go first: under nested KVM they are the slowest, and xdist hands out configs in this
    order, so the longest starts first and the quick ones fill in around it."""
    def order(item: pytest.Item) -> tuple[int, str]:
        vm_config = _config_of(item)
        if vm_config is None:
            return 2, ""
        return (0 if vm_config.accelerator == "kvm" else 1), vm_config.name

    items.sort(key=order)
    if not any(spec.kind == "ssh" for spec in run_hosts(config)):
        skip = pytest.mark.skip(reason="needs an SSH VM host: run with --vm-host ssh://user@host[:port] "
                                       "(ci/test starts one on 127.0.0.1 with ci/sshd)")
        for item in items:
            if item.get_closest_marker("remote"):
                item.add_marker(skip)
    shard = _shard(config)
    if shard is None:
        return
    index, count = shard
    names = sorted({c.name for item in items if (c := _config_of(item))})
    mine = {name for position, name in enumerate(names) if position % count == index - 1}
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        vm_config = _config_of(item)
        in_shard = vm_config.name in mine if vm_config else index == 1
        (keep if in_shard else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- outcomes -----------------------------------------------------------------------------------


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _classify(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    if excinfo is None:
        return None
    if excinfo.errisinstance(GuestTimeout):
        return "timeout"
    if excinfo.errisinstance(GuestCrash):
        return "crashed"
    if excinfo.errisinstance(InfrastructureError) or _disk_full(excinfo.value):
        return "infra"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    slot = item.stash.get(_SLOT, None)
    # JUnit XML takes properties from the teardown report, which copies the item's.
    if report.when == "setup" and slot is not None and slot.vm is not None:
        vm = slot.vm
        item.user_properties += [("mmhil.config", vm.name), ("mmhil.accelerator", vm.accelerator),
                                 ("mmhil.qemu", vm.host.qemu_version(vm.machine.binary)),
                                 ("mmhil.kernel_build", vm.kernel.build_id), ("mmhil.host", vm.host.name)]
    if report.failed:
        outcome = _classify(call.excinfo)
        if outcome:
            item.user_properties.append((_OUTCOME, outcome))
            report.user_properties = [*report.user_properties, (_OUTCOME, outcome)]
        if call.excinfo is not None and _disk_full(call.excinfo.value):
            report.sections.append((_DISK_FULL, _disk_full_note(item, call.excinfo.value)))
        if slot is not None:
            report.sections.append(("mmhil VM", slot.describe(item, report, outcome)))
    return report


_DISK_FULL = "mmhil disk full"


def _disk_full_note(item: pytest.Item, error: BaseException) -> str:
    slot = item.stash.get(_SLOT, None)
    where = slot.vm.artifacts if slot is not None and slot.vm is not None else artifacts_root(item.config)
    file = getattr(error, "filename", None)
    return (f"no space left for the artifacts at {where}" + (f" (writing {file})" if file else "")
            + f": {_free_bytes(where)} bytes free")


def _outcome(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    properties = getattr(report, "user_properties", ())  # a CollectReport has none
    return next((str(v) for k, v in properties if k == _OUTCOME), None)


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    if str(report.outcome) == "rerun":
        return "rerun", "R", "RETRIED"
    outcome = _outcome(report) if report.failed else None
    return _STATUS[outcome] if outcome else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run a VM test; if it ends in an infrastructure error, run it once more on a fresh VM."""
    if _config_of(item) is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    slot = item.stash.get(_SLOT, None)
    brought_up = slot is None or slot.bring_up_error is None  # a failed bring-up was retried already
    if brought_up and any(r.failed and _outcome(r) == "infra" for r in reports):
        for report in reports:
            if report.failed:
                report.sections.append(("mmhil retry", "infrastructure error: retried once on a fresh VM"))
                report.outcome = "rerun"  # type: ignore[assignment]
            item.ihook.pytest_runtest_logreport(report=report)
        item.user_properties[:] = [p for p in item.user_properties if not p[0].startswith("mmhil.")]
        item._initrequest()  # type: ignore[attr-defined]  # a fresh fixture request for the second run
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """An xdist worker died under a test (SIGKILL, OOM): INFRA, retried once on a new worker."""
    from harness.xdist_scheduling import ConfigScheduling

    if isinstance(sched, ConfigScheduling) and sched.retries_crashed(crashitem):
        report.outcome = "rerun"  # type: ignore[assignment]
        report.sections.append(("mmhil retry", "the worker died: retried once on a new worker"))
    else:
        report.user_properties = [*report.user_properties, (_OUTCOME, "infra")]
        # xdist's "???" phase: JUnit XML takes properties from teardown reports only (see makereport).
        report.when = "teardown"


def _kill_vms_at_once(signum: int, frame: FrameType | None) -> None:
    machines = live_machines()
    os.write(2, f"\nmmhil: Ctrl-C again: killing {len(machines)} QEMU process(es) at once, then cleaning up\n"
                .encode())
    for machine in machines:
        machine.kill()


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """The run is ending and is about to clean up (fixture teardown: QMP quit, waits, files). A second
    Ctrl-C must not cut that short, which would leave QEMU, its files or a log's end behind: from now
    on Ctrl-C kills the remaining QEMUs at once, and the cleanup finishes without waiting for them.
    (Ctrl-\\ still ends pytest outright; QEMU dies with it, by its parent-death signal.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _kill_vms_at_once)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A process that died without cleaning up (a killed xdist worker) left its runtime directory;
    the next launch sweeps it, and, in case there is none, the end of the run does."""
    sweep_stale_runtime_dirs()


def _first_line(report: pytest.TestReport) -> str:
    """The first line of what went wrong, as pytest's short summary shows it."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or report.longreprtext).strip()
    line = " | ".join(part.strip() for part in text.splitlines()[:2])[:300]  # "...: guest bugcheck | *** STOP..."
    notes = [content for title, content in report.sections if title == _DISK_FULL]
    return line + "".join(f" ({note})" for note in notes)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """pytest lists only its own categories: show ours the way it shows FAILURES, then count them."""
    tr = terminalreporter
    ours = [(word, report) for category, _, word in _STATUS.values() for report in tr.stats.get(category, [])]
    if ours and tr.config.getoption("tbstyle", "auto") != "no":
        tr.write_sep("=", "mmhil: TIMEOUT, CRASHED and INFRA outcomes")
        for word, report in ours:
            tr.write_sep("_", f"{word} {report.head_line or report.nodeid}", red=True)
            tr.write_line(report.longreprtext)
            for title, content in report.sections:
                tr.write_sep("-", title)
                tr.write_line(content.rstrip("\n"))
    counts = {word: len(tr.stats.get(category, [])) for category, _, word in _STATUS.values()}
    # A retried test's call and teardown can both have failed: one line per test.
    first_reruns: dict[str, pytest.TestReport] = {}
    for report in tr.stats.get("rerun", []):
        first_reruns.setdefault(report.nodeid, report)
    reruns = list(first_reruns.values())
    if ours or reruns:
        parts = [f"{n} {word.lower()}" for word, n in counts.items() if n]
        parts += [f"{len(reruns)} retried"] if reruns else []
        tr.write_sep("=", "mmhil: " + ", ".join(parts))
        for report in reruns:
            tr.write_line(f"RETRIED {report.nodeid} - {_first_line(report)}")
        for word, report in ours:
            tr.write_line(f"{word} {report.nodeid} - {_first_line(report)}")
    per_host = host_counts(terminalreporter.stats)
    if per_host and (len(per_host) > 1 or run_hosts(terminalreporter.config)):
        terminalreporter.write_sep("-", "mmhil: VM tests per host")
        for host, outcomes in sorted(per_host.items()):
            total = sum(outcomes.values())
            detail = ", ".join(f"{n} {word}" for word, n in sorted(outcomes.items()))
            terminalreporter.write_line(f"{host}: {total} VM tests ({detail})")


def host_counts(stats: dict[str, list[Any]]) -> dict[str, dict[str, int]]:
    """{host: {outcome: count}} over the VM tests' final reports (the call, or the setup that ended them)."""
    out: dict[str, dict[str, int]] = {}
    for category, reports in stats.items():
        for report in reports:
            if not isinstance(report, pytest.TestReport) or category == "rerun":
                continue
            if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
                continue
            host = next((str(v) for k, v in report.user_properties if k == "mmhil.host"), None)
            if host is not None:
                word = category or "other"
                out.setdefault(host, {}).setdefault(word, 0)
                out[host][word] += 1
    return out


# -- VMs ----------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """The VM a worker keeps for one config between tests, and the page-table guard of that VM."""

    vm: Vm | None = None
    bring_up_error: str | None = None
    boots: int = 0
    guard: PageTableGuard | str | None = None  # str: why this VM has none
    guarded_vm: Vm | None = None

    def guard_for(self, vm: Vm) -> PageTableGuard | str:
        if self.guarded_vm is not vm or self.guard is None:
            self.guard, self.guarded_vm = PageTableGuard.attach(vm), vm
        return self.guard

    def page_table_changes(self, vm: Vm) -> str:
        """The test's page-table diff for a failure report; never raises."""
        guard = self.guard if self.guarded_vm is vm else None
        if guard is None:
            return "no page-table diff: the test did not get as far as its VM"
        if isinstance(guard, str):
            return guard
        try:
            if vm.alive:  # stop a guest that may still be busy (a timeout), so the walk is consistent
                with vm.verify.stopped(ask_guest=False, timeout=3.0):
                    changes = guard.changes_or_reason()
            else:  # a crashed guest: its RAM outlives QEMU, the walk is post mortem
                changes = guard.changes_or_reason()
        except MmhilError as exc:
            return f"no page-table diff: {str(exc).splitlines()[0]}"
        return changes if isinstance(changes, str) else changes.format()

    def describe(self, item: pytest.Item, report: pytest.TestReport, outcome: str | None) -> str:
        vm = self.vm
        if vm is None:
            return self.bring_up_error or "no VM"
        m = vm.machine
        diff = self.page_table_changes(vm)
        folder, notes = _save_failure_artifacts(vm, item, outcome, diff)
        notes += _space_notes(vm)
        text = (f"config {vm.name} on {vm.accelerator}, QEMU pid {m.pid}, exit status {m.exit_status}\n"
                f"artifacts of this failure: {folder} (repro.sh starts the same VM by hand)\n"
                + "".join(f"{note}\n" for note in notes)
                + f"page-table changes during the test:\n{diff}\n"
                f"console tail ({m.console_log}):\n{vm.console_tail(30)}\n"
                f"QEMU stderr ({m.stderr_log}):\n{m.stderr_tail(10) or '(empty)'}\n"
                f"command line: {m.command_line()}")
        # The whole report beside the logs, so that the folder reads on its own (e.g. from CI).
        with contextlib.suppress(OSError), (folder / "report.txt").open("a") as saved:
            saved.write(f"{item.nodeid} ({report.when}): {outcome or report.outcome}\n\n"
                        f"{report.longreprtext}\n\n-- mmhil VM --\n{text}\n\n")
        return text


_SLOT = pytest.StashKey[_Slot]()


def _free_bytes(path: Path) -> int | None:
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _space_notes(vm: Vm) -> list[str]:
    """What a full disk did to this VM's logs, if it did anything."""
    notes = []
    free = _free_bytes(vm.artifacts)
    if free is not None and free < ARTIFACTS_MIN_FREE:
        notes.append(f"the artifacts' file system is full: {free} bytes free at {vm.artifacts}; "
                     f"the logs there may be cut short")
    qmp = vm.machine.qmp
    if qmp is not None and qmp.log_error is not None:
        notes.append(f"the QMP log {qmp.log_path} could not be written: {qmp.log_error}")
    notes += [f"a log could not be written in full: {problem}" for problem in vm.log_problems]
    return notes


def _core_for_failure(vm: Vm, folder: Path, outcome: str | None) -> CoreDump | None:
    """The failure's core in its folder: the crash's, moved from the boot folder, or, for a guest
    that hangs, one taken now."""
    core = vm.core
    if core is not None and core.path is not None and core.path.exists():
        target = folder / CORE_NAME
        os.replace(core.path, target)  # boot and failure folders share a file system
        vm.core = CoreDump(target, core.note)
    elif core is None and outcome == "timeout" and vm.machine.running:
        vm.core = vm.take_core(folder / CORE_NAME)
    return vm.core


def _repro_script(vm: Vm, core: CoreDump | None) -> str:
    """The machine's script, its comments followed by what a failure folder adds."""
    lines = vm.machine.repro_script().split("\n")
    comments = next(i for i, line in enumerate(lines) if i and not line.startswith("#"))
    notes = ["# A bugcheck (pvpanic) or a triple fault pauses QEMU rather than ending it: on ./qmp.sock,",
             "# `dump-guest-memory` takes a core, `cont` lets a bugcheck exit (status 33), `quit` ends it."]
    if core is not None and core.path is not None:
        notes.append(f"# {core.path.name} beside this script is the guest's memory at the failure; open it with:")
        notes.append(f"#   gdb {vm.kernel.symbols} {core.path.name}")
    return "\n".join([*lines[:comments], *notes, *lines[comments:]])


def _save_failure_artifacts(vm: Vm, item: pytest.Item, outcome: str | None,
                            page_table_diff: str) -> tuple[Path, list[str]]:
    """Fill failures/<test>/; returns the folder and notes on the core and on what could not be saved."""
    folder = vm.artifacts.parent / "failures" / re.sub(r"[^\w.\[\]-]+", "_", item.name)
    notes: list[str] = []
    m = vm.machine
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for log in (m.console_log, m.stderr_log, m.qmp_log, m.agent_log):
            if log.exists():
                shutil.copy(log, folder / log.name)
        (folder / "page-tables.txt").write_text(vm.page_table_dump() + "\n")
        (folder / "page-table-diff.txt").write_text(page_table_diff + "\n")
        (folder / "registers.txt").write_text(vm.register_dump() + "\n")
    except OSError as exc:  # e.g. a full disk: say so, the report itself must still come out
        notes.append(f"the failure folder is incomplete: {exc}")
    core = None
    try:
        core = _core_for_failure(vm, folder, outcome)
    except OSError as exc:
        notes.append(f"the core could not be kept: {exc}")
    if core is not None:
        notes.append(f"core: {core.path} ({core.note}); open it with: gdb {vm.kernel.symbols} {core.path}"
                     if core.path is not None else core.note)
    try:
        repro = folder / "repro.sh"
        repro.write_text(_repro_script(vm, core))
        repro.chmod(0o755)
    except OSError as exc:
        notes.append(f"repro.sh could not be written: {exc}")
    return folder, notes


def _check_artifacts_space(root: Path) -> None:
    """A VM's logs need somewhere to go: refuse to boot onto a full file system, naming it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfrastructureError(f"cannot create the artifacts directory {root}: {exc.strerror}") from exc
    free = _free_bytes(root)
    if free is not None and free < ARTIFACTS_MIN_FREE:
        raise InfrastructureError(
            f"no space for VM logs: the file system of {root} has {free} bytes free, a VM needs "
            f"{ARTIFACTS_MIN_FREE >> 20} MiB; free some, or point --vm-artifacts elsewhere")


class VmPool:
    """One worker's VMs, by config name; at most one runs at a time."""

    def __init__(self, kernel: KernelImage, artifacts: Path, gdb: bool = False,
                 host: HostSpec | None = None) -> None:
        self.kernel = kernel
        self.artifacts = artifacts
        self.gdb = gdb
        self.host = host  # --vm-host's choice for this worker; None: each config's own host
        self.slots: dict[str, _Slot] = {}

    def slot_of(self, vm_config: VmConfig) -> _Slot:
        return self.slots.setdefault(vm_config.name, _Slot())

    def host_for(self, vm_config: VmConfig) -> VmHost:
        if self.host is not None:
            return get_host(self.host)
        return get_host(parse_host_spec(vm_config.host) if vm_config.host else LOCAL)

    def get(self, vm_config: VmConfig) -> tuple[_Slot, Vm]:
        slot = self.slot_of(vm_config)
        if slot.bring_up_error is not None:
            pytest.skip(f"VM {vm_config.name} failed to come up earlier in this run: {slot.bring_up_error}")
        if slot.vm is not None and slot.vm.alive:
            return slot, slot.vm
        # A polled guest keeps a host core busy even when idle: keep one VM per worker running.
        for name in list(self.slots):
            self.discard(name)
        host = self.host_for(vm_config)
        try:
            result = probe(vm_config, host)
        except HostError as exc:  # e.g. a host key that differs from known_hosts: nothing was launched
            slot.bring_up_error = str(exc)
            raise
        if not result.runnable:
            slot.bring_up_error = result.reason
            if result.rejected:  # a broken config is an error, not a reason to skip its tests quietly
                raise InfrastructureError(f"config {vm_config.name} ({vm_config.source}): {result.reason}\n"
                                          f"{result.detail}")
            pytest.skip(f"{vm_config.name}: {result.reason}")
        _check_artifacts_space(self.artifacts)
        for attempt in (1, 2):
            slot.boots += 1
            artifacts = self.artifacts / vm_config.name / f"boot-{slot.boots}"
            try:
                vm = Vm(vm_config, kernel=self.kernel, accelerator=result.accelerator, artifacts=artifacts,
                        gdb_socket=artifacts / "gdb.sock" if self.gdb else None, host=host)
            except OSError as exc:  # its log folder cannot be made
                if not _disk_full(exc):
                    slot.bring_up_error = str(exc)
                raise
            vm.on_gdb_wait = partial(_tell_how_to_attach, self.kernel.symbols)
            slot.vm = vm
            try:
                vm.boot()
                return slot, vm
            except InfrastructureError as exc:
                vm.shutdown()
                if attempt == 2:
                    slot.bring_up_error = str(exc).splitlines()[0]
                    raise
            except (MmhilError, OSError) as exc:
                vm.shutdown()
                if not _disk_full(exc):  # a full disk is not the config's fault: later tests may run
                    slot.bring_up_error = str(exc).splitlines()[0]
                raise
        raise AssertionError("unreachable")

    def discard(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is not None and slot.vm is not None:
            slot.vm.shutdown()
            # A core still in the boot folder belongs to no failure (a test caught the crash): it is
            # as big as the guest's RAM, so it goes.
            (slot.vm.artifacts / CORE_NAME).unlink(missing_ok=True)
            slot.vm = None
            slot.guard = slot.guarded_vm = None

    def close(self) -> None:
        for name in list(self.slots):
            self.discard(name)


def _tell_how_to_attach(kernel: Path, socket_path: Path) -> None:
    # Straight to the terminal: pytest captures sys.stderr while a test runs.
    os.write(2, (
        f"\nmmhil: the VM waits for gdb (timeouts are off). Attach and resume it with:\n"
        f"  gdb {kernel} -ex 'set architecture i386:x86-64' -ex 'target remote {socket_path}' -ex continue\n"
    ).encode())


@pytest.fixture(scope="session")
def mmhil_kernel() -> KernelImage:
    """The guest kernel, built once (under a file lock, so once across xdist workers too)."""
    return build_kernel()


def artifacts_root(config: pytest.Config) -> Path:
    """--vm-artifacts, or artifacts/ under the rootdir: a pytest run nested in a test (pytester) has a
    rootdir of its own, so it never clears the folder of the run around it."""
    chosen = config.getoption("--vm-artifacts")
    return Path(chosen) if chosen else config.rootpath / "artifacts"


def _worker_id(config: pytest.Config) -> str:
    # From xdist itself, not PYTEST_XDIST_WORKER: a nested run inherits that variable from its worker.
    return str(getattr(config, "workerinput", {}).get("workerid", "main"))


_cleared_artifacts: list[Path] = []


@pytest.fixture(scope="session")
def vm_pool(request: pytest.FixtureRequest, mmhil_kernel: KernelImage) -> Iterator[VmPool]:
    root = artifacts_root(request.config) / _worker_id(request.config)
    if not _cleared_artifacts:  # once per process: a retry may set this fixture up again
        shutil.rmtree(root, ignore_errors=True)
        _cleared_artifacts.append(root)
    pool = VmPool(mmhil_kernel, root, gdb=request.config.getoption("--gdb"), host=worker_host(request.config))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def ssh_host(request: pytest.FixtureRequest) -> VmHost:
    """The first SSH host of --vm-host (tests marked `remote` are skipped when there is none)."""
    spec = next((s for s in run_hosts(request.config) if s.kind == "ssh"), None)
    if spec is None:
        pytest.skip("needs an SSH VM host: run with --vm-host ssh://user@host[:port]")
    return get_host(spec)


@pytest.fixture
def vm_config(request: pytest.FixtureRequest) -> VmConfig:
    config: VmConfig = request.param
    return config


def _is_irql(key: str) -> bool:
    return key == "irql" or key.startswith("irql_cpu")  # the serving CPU's, then every other CPU's


def leaks(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """What a test left behind: every count of `outstanding` that grew, and an IRQL left raised."""
    found = [f"{key}: {before.get(key, 0)} -> {value}" for key, value in sorted(after.items())
             if not _is_irql(key) and value > before.get(key, 0)]
    for key, value in sorted(after.items()):
        if _is_irql(key) and value != 0:
            where = "" if key == "irql" else f" on CPU {key.removeprefix('irql_cpu')}"
            found.append(f"IRQL left at {value}{where} (tests return to PASSIVE_LEVEL)")
    return found


def _passed(request: pytest.FixtureRequest, vm: Vm) -> bool:
    """The test ran to its end and passed, on a VM still alive. (No call report: it was interrupted,
    and its guest may be stuck where Ctrl-C left it.)"""
    reports = request.node.stash.get(_REPORTS, {})
    return "call" in reports and not any(r.failed for r in reports.values()) and vm.alive


def _leak_check(request: pytest.FixtureRequest, vm: Vm, before: dict[str, int]) -> list[str]:
    """What a passing test left behind; nothing is checked after a failure or a crash."""
    return leaks(before, vm.mm.outstanding()) if _passed(request, vm) else []


def _mapping_check(request: pytest.FixtureRequest, vm: Vm, guard: PageTableGuard | str) -> PageTableChanges | None:
    """The page-table changes a passing test left in regions it must restore, if any."""
    if isinstance(guard, str) or not _passed(request, vm):
        return None
    changes = guard.changes()
    return changes if changes.left_behind else None


def _fail_for_leaks(vm: Vm, left: list[str], mappings: PageTableChanges | None = None) -> None:
    if not left and mappings is None:
        return
    lines = list(left)
    if mappings is not None:
        lines.append("page-table mappings in regions the test must leave as it found them "
                     "(docs/faults.md):\n" + mappings.format(mappings.left_behind))
    pytest.fail(f"{vm.name}: the test left kernel state behind (the VM is discarded, so the next test "
                f"starts clean):\n  " + "\n  ".join(lines), pytrace=False)


def _start(request: pytest.FixtureRequest, vm_pool: VmPool, vm_config: VmConfig) -> tuple[Vm, PageTableGuard | str]:
    slot = vm_pool.slot_of(vm_config)
    request.node.stash[_SLOT] = slot  # before the boot, so that a failed boot is reported with its VM
    _, machine = vm_pool.get(vm_config)
    guard = slot.guard_for(machine)
    if isinstance(guard, PageTableGuard):
        guard.start()
    return machine, guard


@pytest.fixture
def vm(request: pytest.FixtureRequest, vm_pool: VmPool, vm_config: VmConfig) -> Iterator[Vm]:
    """A booted VM of the test's config; shared with later tests unless this one fails, crashes it or
    leaves kernel objects or mappings behind (which fails it)."""
    machine, guard = _start(request, vm_pool, vm_config)
    before = machine.mm.outstanding()
    yield machine
    left = _leak_check(request, machine, before)
    mappings = _mapping_check(request, machine, guard)
    if left or mappings or not _passed(request, machine):
        vm_pool.discard(vm_config.name)
    _fail_for_leaks(machine, left, mappings)


@pytest.fixture
def fresh_vm(request: pytest.FixtureRequest, vm_pool: VmPool, vm_config: VmConfig) -> Iterator[Vm]:
    """A VM booted for this test alone (for tests that crash or kill it on purpose)."""
    vm_pool.discard(vm_config.name)
    machine, guard = _start(request, vm_pool, vm_config)
    before = machine.mm.outstanding()
    yield machine
    try:
        _fail_for_leaks(machine, _leak_check(request, machine, before), _mapping_check(request, machine, guard))
    finally:
        vm_pool.discard(vm_config.name)
