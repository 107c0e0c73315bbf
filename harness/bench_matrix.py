"""`mmhil bench matrix`: the full pruned page-permission matrix per paging mode, timed.

For each config (default: `default`, 4-level, and `la57`, 5-level) it boots one VM and runs the whole
pruned matrix `--runs` times. Each run is end to end: probe setup, every batch (guest build, access,
answer), the host's model, the reads of every entry from guest RAM, the comparisons, release. It prints
the median and spread of the run time, cases per second from the median, and the share spent inside
the guest's batch requests; beside it the agent's no-op `hello` round trip measured in the same run
(the floor of each batch), and kvm-unit-tests' access_test rate as qemu-facts.md quotes it (7,500
cases/s under TCG; it cannot run here), with what that rate would need for the same unpruned matrix.
Wiring into `mmhil`: `harness.cli.main` calls `harness.bench_matrix.add_parser(bench_sub)`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.bench import Sample
from harness.bench_verify import boot_vm
from harness.config import DEFAULT_CONFIG_DIR
from harness.errors import MmhilError
from harness.matrix.cases import KVM_UNIT_TESTS_CASES_PER_SECOND, pruned_cases, unpruned_count
from harness.matrix.runner import MatrixRun, qemu_cpu, run_matrix
from harness.probe import qemu_version
from harness.vm import Vm

DEFAULT_CONFIGS = ("default", "la57")
HELLO_CALLS = 200
GOAL_SECONDS = 30.0  # issue 11: the full pruned matrix per paging mode under TCG


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `matrix` under `mmhil bench`."""
    p: argparse.ArgumentParser = bench_sub.add_parser(
        "matrix", help="the full pruned page-permission matrix per paging mode: cases/s beside kvm-unit-tests")
    p.add_argument("--vm-config", action="append", metavar="NAME",
                   help=f"a config to run (repeatable; default: {', '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--runs", type=int, default=5, help="full-matrix runs per config, at least 3 (default 5)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the configs' accelerator")
    p.set_defaults(func=cmd_bench_matrix)
    return p


def human_duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


@dataclass
class ConfigResult:
    vm_name: str
    levels: int
    accelerator: str
    cpu_text: str
    cases: int
    unpruned: int
    enumeration_seconds: float
    hello: Sample
    runs: list[MatrixRun] = field(default_factory=list)

    @property
    def total(self) -> Sample:
        return Sample(tuple(r.seconds for r in self.runs))

    @property
    def disagreements(self) -> int:
        return sum(len(r.disagreements) for r in self.runs)


def _hello_floor(vm: Vm) -> Sample:
    times = []
    for _ in range(HELLO_CALLS):
        start = time.perf_counter()
        vm.request("hello")
        times.append(time.perf_counter() - start)
    return Sample(tuple(times))


def measure(vm: Vm, runs: int) -> ConfigResult:
    cpu = qemu_cpu(vm)
    levels = vm.config.paging_levels
    start = time.perf_counter()
    cases = pruned_cases(levels, cpu)
    enumeration = time.perf_counter() - start
    result = ConfigResult(vm.name, levels, vm.accelerator, cpu.describe(), len(cases), unpruned_count(levels, cpu),
                          enumeration, _hello_floor(vm))
    for _ in range(runs):
        result.runs.append(run_matrix(vm, cases, cpu))
    return result


def report(results: list[ConfigResult], runs: int) -> str:
    rate = KVM_UNIT_TESTS_CASES_PER_SECOND
    lines = [
        f"mmhil bench matrix: QEMU {qemu_version()}, {runs} full-matrix runs per config; reference: kvm-unit-tests "
        f"access_test at {rate:,} cases/s under TCG (qemu-facts.md; it does not complete on this QEMU)",
        f"{'config':12} {'mode':8} {'accel':5} {'pruned':>7} {'unpruned':>19} {'run median':>10} "
        f"{'cases/s':>8} {'x 7.5k/s':>8} {'in guest':>8}  spread of the run time",
    ]
    for r in results:
        total = r.total
        cps = r.cases / total.median
        guest = statistics.median(run.guest_seconds / run.seconds for run in r.runs)
        spread = total.spread("ms" if total.median < 10 else "s")
        lines.append(f"{r.vm_name:12} {r.levels}-level  {r.accelerator:5} {r.cases:7,} {r.unpruned:19,} "
                     f"{total.median:8.2f} s {cps:8,.0f} {cps / rate:7.1f}x {guest:8.0%}  {spread}")
    lines.append("")
    for r in results:
        batches = r.runs[0].batches
        lines.append(
            f"{r.vm_name} ({r.cpu_text}): {batches} batches per run; agent hello round trip median "
            f"{r.hello.median * 1e3:.3f} ms ({r.hello.spread()}), i.e. {batches * r.hello.median * 1e3:.0f} ms of "
            f"round-trip floor per run; case enumeration {r.enumeration_seconds:.2f} s, once per process")
        lines.append(
            f"  kvm-unit-tests' rate on this config's unpruned matrix: {human_duration(r.unpruned / rate)}; on the "
            f"pruned one: {human_duration(r.cases / rate)}; goal for the pruned matrix: <= {GOAL_SECONDS:.0f} s "
            f"({'met' if r.total.median <= GOAL_SECONDS else 'NOT met'})")
        lines.append(f"  disagreements with the model over all runs: {r.disagreements}")
    return "\n".join(lines)


def cmd_bench_matrix(args: argparse.Namespace) -> int:
    if args.runs < 3:
        raise MmhilError("--runs must be at least 3 (a median and a spread need them)")
    config_dir = Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR)
    names = [n for option in args.vm_config or DEFAULT_CONFIGS for n in option.split(",") if n]
    results = []
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-matrix-") as scratch:
        for name in names:
            vm = boot_vm(name, config_dir, getattr(args, "accel", None), Path(scratch) / name)
            try:
                results.append(measure(vm, args.runs))
            finally:
                vm.shutdown()
    print(report(results, args.runs))
    return 1 if any(r.disagreements for r in results) else 0
