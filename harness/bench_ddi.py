"""`mmhil bench ddi`: DDI round trips per second, each path beside references measured in the same run.

Single calls, round-robin on one booted VM so every path sees the same machine at the same moment:

- the agent's `ping`: a request that does nothing, the floor of any agent round trip;
- the same `ping` kept on COM2: the serial channel's floor, beside the mailbox's (when the VM has one);
- MmGetPhysicalAddress on a nonpaged pool VA: the cheapest DDI (one page-table walk in the guest);
- a MmMapLockedPagesWithReservedMapping + MmUnmapReservedMapping pair of 16 pages: two requests, 16 PTE
  writes and 16 INVLPGs;
- QEMU's `gva2gpa` on the same VA: a monitor round trip, the reference for host-side checks.

Then `ping` and MmGetPhysicalAddress back to back, each `--calls` times in a row: the round trip
itself, with the host's and the guest's caches warm (interleaved with other work, as above, a call
costs some microseconds more). Then the same DDIs batched (`vm.mm.batch()`): `--batch` calls per
round trip, timed per batch, so the figure is the cost of one call when many share a round trip.

Each figure is the median of per-call wall times on the host (the rate printed is its reciprocal).
Wiring into `mmhil`: `harness.cli.main` calls `harness.bench_ddi.add_parser(bench_sub)`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    p.add_argument("--batch", type=int, default=1000, help="calls per batched round trip (default 1000)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the config's accelerator")
    p.set_defaults(func=cmd_bench_ddi)
    return p


@dataclass
class TimedPath:
    name: str
    run: Callable[[], object]
    calls_per_run: int = 1
    times: list[float] = field(default_factory=list)

    def sample(self) -> Sample:
        """Seconds per call."""
        return Sample(tuple(t / self.calls_per_run for t in self.times))


@dataclass
class Result:
    single: list[TimedPath]
    back_to_back: list[TimedPath]
    batched: list[TimedPath]
    wrong_pa: int  # MmGetPhysicalAddress answers that disagreed with gva2gpa
    wrong_map: int  # map calls that did not return the reservation start


def _time_round_robin(paths: list[TimedPath], rounds: int) -> None:
    for _ in range(rounds):
        for path in paths:
            start = time.perf_counter()
            path.run()
            path.times.append(time.perf_counter() - start)


def measure(vm: Vm, calls: int, batch: int) -> Result:
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

        def ping_on_com2() -> None:
            vm.agent.use_mailbox = False
            try:
                vm.request("ping")
            finally:
                vm.agent.use_mailbox = True

        def get_pa_batched() -> None:
            with mm.batch() as b:
                answers = [b.MmGetPhysicalAddress(va) for _ in range(batch)]
            wrong["pa"] += sum(a.value != expected_pa for a in answers)

        def map_unmap_batched() -> None:
            with mm.batch() as b:
                maps = []
                for _ in range(batch // 2):
                    maps.append(b.MmMapLockedPagesWithReservedMapping(reservation, TAG, mdl, MM_CACHED))
                    b.MmUnmapReservedMapping(reservation, TAG, mdl)
            wrong["map"] += sum(m.value != reservation for m in maps)

        channel = "mailbox" if vm.agent.mailbox is not None else "COM2"
        single = [
            TimedPath(f"agent ping, {channel} (no-op reference)", lambda: vm.request("ping")),
            TimedPath("agent ping, COM2 (serial reference)", ping_on_com2),
            TimedPath("MmGetPhysicalAddress", get_pa),
            TimedPath(f"reserved map+unmap, {MAP_PAGES} pages", map_unmap),
            TimedPath("QEMU gva2gpa (monitor reference)", lambda: vm.qemu.gva2gpa(va)),
        ]
        _time_round_robin(single, calls)
        back_to_back = [TimedPath(f"agent ping, {channel}", lambda: vm.request("ping")),
                        TimedPath("MmGetPhysicalAddress", get_pa)]
        for path in back_to_back:
            _time_round_robin([path], calls)
        batched = [
            TimedPath(f"MmGetPhysicalAddress, {batch} a batch", get_pa_batched, batch),
            TimedPath(f"reserved map+unmap pair, {batch // 2} pairs a batch", map_unmap_batched, batch // 2),
        ]
        _time_round_robin(batched, max(5, calls // batch * 5))
        return Result(single, back_to_back, batched, wrong["pa"], wrong["map"])
    finally:
        mm.MmFreePagesFromMdl(mdl)
        mm.IoFreeMdl(mdl)
        mm.MmFreeMappingAddress(reservation, TAG)
        mm.ExFreePoolWithTag(va, TAG)


def _row(path: TimedPath) -> str:
    sample = path.sample()
    return f"{path.name:46} {1 / sample.median:9,.0f} {sample.median * 1e6:9.1f} us  {sample.spread('us')}"


def report(vm: Vm, result: Result, calls: int) -> str:
    c = vm.config
    lines = [
        f"mmhil bench ddi: {c.name} ({c.machine}, {vm.accelerator}, {c.paging_levels}-level, {c.memory_mib} MiB), "
        f"QEMU {qemu_version()}",
        f"{calls} single calls per path, round-robin; host wall time per call, agent or monitor round trip included",
        f"{'path':46} {'calls/s':>9} {'median':>12}  spread per call",
    ]
    lines += [_row(path) for path in result.single]
    ping, serial, pa, pair, qemu = (p.sample().median for p in result.single)
    lines.append(f"ratios of medians: COM2 ping / ping {serial / ping:.2f}x; MmGetPhysicalAddress / ping "
                 f"{pa / ping:.2f}x; map+unmap pair / ping {pair / ping:.2f}x (two requests); "
                 f"gva2gpa / ping {qemu / ping:.2f}x")
    lines.append(f"back to back ({calls} calls in a row a path):")
    lines += [_row(path) for path in result.back_to_back]
    lines.append(f"batched (vm.mm.batch(); {len(result.batched[0].times)} batches a path), per call:")
    lines += [_row(path) for path in result.batched]
    batched_pa, batched_pair = (p.sample().median for p in result.batched)
    lines.append(f"batched / single: MmGetPhysicalAddress {batched_pa / pa:.2f}x, map+unmap pair "
                 f"{batched_pair / pair:.2f}x")
    lines.append(f"checks: {result.wrong_pa} MmGetPhysicalAddress answers disagreeing with gva2gpa; "
                 f"{result.wrong_map} maps not returning the reservation start")
    return "\n".join(lines)


def cmd_bench_ddi(args: argparse.Namespace) -> int:
    if args.calls < 1000:
        raise MmhilError("--calls must be at least 1000")
    if args.batch < 2:
        raise MmhilError("--batch must be at least 2")
    config_dir = Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR)
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-ddi-") as scratch:
        vm = boot_vm(args.vm_config, config_dir, getattr(args, "accel", None), Path(scratch))
        try:
            result = measure(vm, args.calls, args.batch)
            print(report(vm, result, args.calls))
        finally:
            vm.shutdown()
    return 1 if result.wrong_pa or result.wrong_map else 0
