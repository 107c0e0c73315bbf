"""`mmhil bench verify`: translations the host verifies per second, three ways side by side, in one run.

The three paths, measured round-robin on one booted VM so they see the same machine at the same time:

- host walker over the shared RAM backend: `translate_many` over the mmapped RAM file, one batch per
  stopped window;
- host walker over the monitor backend: the same batch walk reading the tables through QMP `pmemsave`
  (a page cache that starts cold in every window: one read per run of table pages);
- QEMU's walker: HMP `gva2gpa`, one monitor round trip per address.

With `--vm-host ssh://...` the VM runs on that host, and the host walker reads guest RAM the ways a
remote VM allows: its RAM file through SFTP (pipelined reads, a page cache per window), QMP
`pmemsave` into the remote runtime directory fetched by SFTP, and HMP `xp` alone (text over QMP).

Every figure is end to end for its window: `query-status`, `stop`, `info registers -a`, the walk, `cont`.
Wiring into `mmhil`: `harness.cli.main` calls `harness.bench_verify.add_parser(bench_sub)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from harness.build import build_kernel
from harness.config import DEFAULT_CONFIG_DIR, load_configs, select_configs
from harness.errors import MmhilError
from harness.hosts import VmHost, get_host, parse_host_spec
from harness.oracle.memory import MonitorMemory, PageCache
from harness.oracle.paging import canonical
from harness.oracle.walker import Snapshot, translate_many
from harness.probe import probe
from harness.verify import Verifier
from harness.vm import Vm

SHARED_TARGET = 1_000_000  # translations/s over shared RAM (batch)
RATIO_TARGET = 1000  # shared RAM against gva2gpa


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `verify` under `mmhil bench`."""
    p: argparse.ArgumentParser = bench_sub.add_parser(
        "verify", help="translations verified per second: host walker (shared RAM, monitor) beside gva2gpa")
    p.add_argument("--vm-config", default="default", metavar="NAME", help="the VM config to boot (default: default)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="measuring time, shared between the paths and rounds (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; each path runs once per round (default 5)")
    p.add_argument("--batch", type=int, default=200_000, help="VAs per host-walker batch (default 200000)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the config's accelerator")
    p.add_argument("--vm-host", default="local", metavar="HOST",
                   help="where the VM runs: local (default) or ssh://user@host[:port][#key=...] (docs/hosts.md)")
    p.set_defaults(func=cmd_bench_verify)
    return p


@dataclass
class PathResult:
    name: str
    rates: list[float]  # translations per second, one per round
    translations: int = 0
    seconds: float = 0.0

    def add(self, translations: int, seconds: float) -> None:
        self.rates.append(translations / seconds)
        self.translations += translations
        self.seconds += seconds

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def spread(self) -> str:
        if len(self.rates) < 2:
            return "n/a"
        q1, _, q3 = statistics.quantiles(self.rates, n=4)
        return f"IQR {_rate(q1)}-{_rate(q3)}, min {_rate(min(self.rates))}, max {_rate(max(self.rates))}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def boot_vm(config_name: str, config_dir: Path, accel: str | None, artifacts: Path,
            host: VmHost | None = None) -> Vm:
    chosen = select_configs(load_configs(config_dir), [config_name])
    if len(chosen) != 1:
        raise MmhilError(f"--vm-config {config_name} names {len(chosen)} configs; the bench boots one")
    config = dataclasses.replace(chosen[0], accelerator=accel) if accel else chosen[0]
    result = probe(config, host)
    if not result.runnable:
        raise MmhilError(f"{config.name} cannot run {'here' if host is None else 'on ' + host.name}: {result.reason}")
    vm = Vm(config, kernel=build_kernel(), accelerator=result.accelerator, artifacts=artifacts, host=host)
    try:
        return vm.boot()
    except BaseException:
        vm.shutdown()
        raise


def sample_vas(snap: Snapshot, n: int, seed: int) -> npt.NDArray[np.uint64]:
    """Mostly mapped VAs (every range alike), one in ten a random canonical probe (mostly unmapped)."""
    rng = np.random.default_rng(seed)
    mapped = snap.random_vas(n - n // 10, seed=seed)
    bits = snap.mode.va_bits
    raw = rng.integers(0, 1 << bits, n // 10, dtype=np.uint64).tolist()
    probes = np.array([canonical(int(v), snap.mode.levels) for v in raw], dtype=np.uint64)
    out = np.concatenate([mapped, probes])
    rng.shuffle(out)
    return out


def _batch_round(verify: Verifier, vas: npt.NDArray[np.uint64], backend: str, seconds: float) -> tuple[int, float]:
    """Whole batches, each in its own stopped window, until ``seconds`` are used: (translations, time).

    ``backend`` is a Window backend, or "xp": the monitor without pmemsave, HMP `xp` text only."""
    done, start = 0, time.perf_counter()
    while True:
        with verify.stopped() as w:
            if backend == "xp":
                xp = MonitorMemory(verify.monitor_memory.monitor, verify.layout, pmemsave=False)
                translate_many(PageCache(xp), w.cr3, vas, w.mode)
            else:
                w.translate_many(vas, backend=backend)
        done += int(vas.size)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


Disagreement = tuple[int, int | None, int | None]  # VA, the host walk's PA, gva2gpa's PA


def _qemu_round(verify: Verifier, vas: npt.NDArray[np.uint64], seconds: float) -> tuple[int, float, list[Disagreement]]:
    """gva2gpa on the batch's VAs in one stopped window until ``seconds`` are used:
    (translations, time, the answers that disagree with the host walk)."""
    with verify.stopped() as w:
        host = w.translate_many(vas)
        pas, ok = host.pa.tolist(), host.ok.tolist()
        values = vas.tolist()
        done, wrong, start = 0, [], time.perf_counter()
        while True:
            i = done % len(values)
            va, expected = int(values[i]), (int(pas[i]) if ok[i] else None)
            answer = verify.gva2gpa(va)
            if answer != expected:
                wrong.append((va, expected, answer))
            done += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return done, elapsed, wrong


def measure(vm: Vm, *, seconds: float, rounds: int, batch: int) -> tuple[list[PathResult], list[Disagreement]]:
    """Per-round rates of the three paths; also returns the gva2gpa answers that disagreed with the host."""
    verify = vm.verify
    snap = verify.snapshot()
    batches: list[tuple[str, PathResult]] = []
    if verify.shared_memory is not None:
        batches.append(("shared", PathResult("host walk, shared RAM (batch)", [])))
    if verify.remote_memory is not None:
        batches.append(("remote", PathResult("host walk, RAM file over SFTP (batch)", [])))
    batches.append(("monitor", PathResult("host walk, monitor (batch)", [])))
    if not vm.host.is_local:
        batches.append(("xp", PathResult("host walk, monitor xp only (batch)", [])))
    qemu = PathResult("QEMU gva2gpa (one call per VA)", [])
    # The batch paths need little time per round; gva2gpa gets the rest of the round.
    batch_slice = seconds / rounds / 6
    qemu_slice = seconds / rounds - len(batches) * batch_slice
    disagreements: list[Disagreement] = []
    for r in range(rounds):
        vas = sample_vas(snap, batch, seed=r)
        for backend, result in batches:
            result.add(*_batch_round(verify, vas, backend, batch_slice))
        n, t, wrong = _qemu_round(verify, vas, qemu_slice)
        qemu.add(n, t)
        disagreements += wrong
    return [result for _, result in batches] + [qemu], disagreements


def _pa(pa: int | None) -> str:
    return "unmapped" if pa is None else f"{pa:#x}"


def report(vm: Vm, paths: list[PathResult], disagreements: list[Disagreement], *, rounds: int, batch: int,
           seconds: float) -> str:
    c = vm.config
    lines = [
        f"mmhil bench verify: {c.name} ({c.machine}, {vm.accelerator}, {c.paging_levels}-level, "
        f"{c.memory_mib} MiB) on {vm.host.name}, QEMU {vm.host.qemu_version(vm.machine.binary)}",
        f"{rounds} rounds in ~{seconds:g} s; host batches of {batch:,} VAs (90% mapped, 10% random canonical), "
        "each in its own stopped window, window costs included",
        f"{'path':40} {'median/s':>14}  spread over rounds (translations/s)",
    ]
    for p in paths:
        extra = f"; {1e3 / p.median:.2f} ms per call" if p.name.startswith("QEMU") and p.median else ""
        lines.append(f"{p.name:40} {_rate(p.median):>14}  {p.spread()}{extra}")
    by_name = {p.name.split(" (")[0]: p.median for p in paths}
    shared = by_name.get("host walk, shared RAM")
    monitor = by_name["host walk, monitor"]
    qemu = by_name["QEMU gva2gpa"]
    ratios = []
    if shared is not None:
        ratios += [f"shared / gva2gpa {shared / qemu:,.0f}x", f"shared / monitor {shared / monitor:,.1f}x"]
    ratios.append(f"monitor / gva2gpa {monitor / qemu:,.0f}x")
    if "host walk, RAM file over SFTP" in by_name:
        ratios.append(f"SFTP / gva2gpa {by_name['host walk, RAM file over SFTP'] / qemu:,.0f}x")
    lines.append("ratios of medians: " + "; ".join(ratios))
    if shared is not None:
        lines.append(f"targets: shared >= {SHARED_TARGET:,}/s {'met' if shared >= SHARED_TARGET else 'NOT met'}; "
                     f"shared >= {RATIO_TARGET}x gva2gpa {'met' if shared >= RATIO_TARGET * qemu else 'NOT met'}")
    else:
        lines.append("targets: no shared RAM backend on this VM, so the shared-RAM targets cannot be measured")
    checked = paths[-1].translations
    lines.append(f"cross-check: {checked:,} gva2gpa answers, {len(disagreements)} disagreeing with the host walk")
    lines += [f"  VA {va:#x}: host walk {_pa(host)}, gva2gpa {_pa(qemu)}" for va, host, qemu in disagreements[:8]]
    return "\n".join(lines)


def cmd_bench_verify(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.seconds <= 0 or args.batch < 10:
        raise MmhilError("--rounds must be >= 1, --seconds > 0 and --batch >= 10")
    config_dir = Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR)
    host = get_host(parse_host_spec(getattr(args, "vm_host", None) or "local"))
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-verify-") as scratch:
        vm = boot_vm(args.vm_config, config_dir, getattr(args, "accel", None), Path(scratch), host)
        try:
            paths, disagreements = measure(vm, seconds=args.seconds, rounds=args.rounds, batch=args.batch)
            print(report(vm, paths, disagreements, rounds=args.rounds, batch=args.batch, seconds=args.seconds))
        finally:
            vm.shutdown()
    return 1 if disagreements else 0
