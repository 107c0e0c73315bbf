"""`mmhil bench ddi`: DDI round trips per second, each path beside references measured in the same run.

Five paths, called round-robin on one booted VM so they see the same machine at the same moment:

- the agent's `hello`: a no-op request, the floor of any agent round trip (channel, parser, frame);
- the same `hello` kept on COM2: the serial channel's floor, beside the mailbox's (when the VM has one);
- MmGetPhysicalAddress on a nonpaged pool VA: the cheapest DDI (one page-table walk in the guest);
- a MmMapLockedPagesWithReservedMapping + MmUnmapReservedMapping pair of 16 pages: two requests, 16 PTE
  writes and 16 INVLPGs;
- QEMU's `gva2gpa` on the same VA: a monitor round trip, the reference for host-side checks.

Each figure is the median of per-call wall times on the host over `--calls` calls (the rate printed is
its reciprocal). Wiring into `mmhil`: `harness.cli.main` calls `harness.bench_ddi.add_parser(bench_sub)`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.bench import Sample
from harness.bench_verify import boot_vm
from harness.config import DEFAULT_CONFIG_DIR
from harness.ddi.nt import MM_CACHED
from harness.errors import MmhilError
from harness.guest import NON_PAGED_POOL_NX
from harness.probe import qemu_version
from harness.vm import Vm

MAP_PAGES = 16
PAGE = 0x1000
TAG = "Bnch"
HIGHEST_PHYSICAL = (1 << 52) - 1


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `ddi` under `mmhil bench`."""
    p: argparse.ArgumentParser = bench_sub.add_parser(
        "ddi", help="DDI round trips per second (MmGetPhysicalAddress, reserved map+unmap) beside hello and gva2gpa")
    p.add_argument("--vm-config", default="default", metavar="NAME", help="the VM config to boot (default: default)")
    p.add_argument("--calls", type=int, default=1000, help="calls per path, at least 1000 (default 1000)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the config's accelerator")
    p.set_defaults(func=cmd_bench_ddi)
    return p


@dataclass
class TimedPath:
    name: str
    run: Callable[[], object]
    times: list[float]

    def sample(self) -> Sample:
        return Sample(tuple(self.times))


@dataclass
class Result:
    paths: list[TimedPath]
    wrong_pa: int  # MmGetPhysicalAddress answers that disagreed with gva2gpa
    wrong_map: int  # map calls that did not return the reservation start


def measure(vm: Vm, calls: int) -> Result:
    mm = vm.mm
    va = mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    reservation = mm.MmAllocateMappingAddress(MAP_PAGES * PAGE, TAG)
    mdl = mm.MmAllocatePagesForMdlEx(0, HIGHEST_PHYSICAL, 0, MAP_PAGES * PAGE)
    if not (va and reservation and mdl):
        raise MmhilError(f"{vm.name}: could not set up the bench (pool {va:#x}, reservation {reservation:#x}, "
                         f"MDL {mdl:#x})")
    try:
        expected_pa = vm.qemu.gva2gpa(va)
        wrong = {"pa": 0, "map": 0}

        def get_pa() -> None:
            wrong["pa"] += mm.MmGetPhysicalAddress(va) != expected_pa

        def map_unmap() -> None:
            wrong["map"] += mm.MmMapLockedPagesWithReservedMapping(reservation, TAG, mdl, MM_CACHED) != reservation
            mm.MmUnmapReservedMapping(reservation, TAG, mdl)

        def hello_on_com2() -> None:
            vm.agent.use_mailbox = False
            try:
                vm.request("hello")
            finally:
                vm.agent.use_mailbox = True

        channel = "mailbox" if vm.agent.mailbox is not None else "COM2"
        paths = [
            TimedPath(f"agent hello, {channel} (no-op reference)", lambda: vm.request("hello"), []),
            TimedPath("agent hello, COM2 (serial reference)", hello_on_com2, []),
            TimedPath("MmGetPhysicalAddress", get_pa, []),
            TimedPath(f"reserved map+unmap, {MAP_PAGES} pages", map_unmap, []),
            TimedPath("QEMU gva2gpa (monitor reference)", lambda: vm.qemu.gva2gpa(va), []),
        ]
        for _ in range(calls):
            for path in paths:
                start = time.perf_counter()
                path.run()
                path.times.append(time.perf_counter() - start)
        return Result(paths, wrong["pa"], wrong["map"])
    finally:
        mm.MmFreePagesFromMdl(mdl)
        mm.IoFreeMdl(mdl)
        mm.MmFreeMappingAddress(reservation, TAG)
        mm.ExFreePoolWithTag(va, TAG)


def report(vm: Vm, result: Result, calls: int) -> str:
    c = vm.config
    lines = [
        f"mmhil bench ddi: {c.name} ({c.machine}, {vm.accelerator}, {c.paging_levels}-level, {c.memory_mib} MiB), "
        f"QEMU {qemu_version()}",
        f"{calls} calls per path, round-robin; host wall time per call, agent or monitor round trip included",
        f"{'path':38} {'calls/s':>9} {'median':>9}  spread per call",
    ]
    medians = {}
    for path in result.paths:
        sample = path.sample()
        medians[path.name] = sample.median
        lines.append(f"{path.name:38} {1 / sample.median:9,.0f} {sample.median * 1e3:7.3f} ms  {sample.spread()}")
    hello, serial, pa, pair, qemu = (medians[p.name] for p in result.paths)
    lines.append(f"ratios of medians: COM2 hello / hello {serial / hello:.2f}x; MmGetPhysicalAddress / hello "
                 f"{pa / hello:.2f}x; map+unmap pair / hello {pair / hello:.2f}x (two requests); "
                 f"gva2gpa / hello {qemu / hello:.2f}x")
    lines.append(f"checks: {result.wrong_pa} MmGetPhysicalAddress answers disagreeing with gva2gpa; "
                 f"{result.wrong_map} maps not returning the reservation start")
    return "\n".join(lines)


def cmd_bench_ddi(args: argparse.Namespace) -> int:
    if args.calls < 1000:
        raise MmhilError("--calls must be at least 1000")
    config_dir = Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR)
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-ddi-") as scratch:
        vm = boot_vm(args.vm_config, config_dir, getattr(args, "accel", None), Path(scratch))
        try:
            result = measure(vm, args.calls)
            print(report(vm, result, args.calls))
        finally:
            vm.shutdown()
    return 1 if result.wrong_pa or result.wrong_map else 0
