"""The `mmhil` command: configs, build, run, shell, bench, fuzz, soak."""

from __future__ import annotations

import argparse
import cmd
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

from harness import bench, bench_ddi, bench_matrix, bench_tcg, bench_verify
from harness.agent.codec import decode_value, encode_value
from harness.build import REPO_ROOT, KernelImage, build_kernel, current_kernel
from harness.config import DEFAULT_CONFIG_DIR, VmConfig, load_configs, select_configs
from harness.errors import AgentError, GuestCrash, HostError, InfrastructureError, MmhilError
from harness.fuzz import cli as fuzz_cli
from harness.guest import pool_tag
from harness.hosts import LOCAL, HostSpec, get_host, parse_host_spec
from harness.machine import QEMU_BINARY
from harness.probe import probe, qemu_version
from harness.vm import Vm


def _configs(args: argparse.Namespace) -> list[VmConfig]:
    available = load_configs(Path(args.config_dir))
    names = [n for option in args.vm_config or [] for n in option.split(",") if n]
    chosen = select_configs(available, names) if names else list(available.values())
    accel = getattr(args, "accel", None)
    return [replace(c, accelerator=accel) if accel else c for c in chosen]


def cmd_configs(args: argparse.Namespace) -> int:
    print(f"QEMU {qemu_version()}; configs in {args.config_dir}")
    for config in _configs(args):
        result = probe(config)
        state = f"runnable on {result.accelerator}" if result.runnable else "NOT runnable"
        print(f"{config.name:14} {config.machine:8} {config.paging_levels}-level {config.memory_mib:>6} MiB "
              f"cpu={config.cpu}  {state}: {result.reason}")
        if config.description:
            print(f"{'':14} {config.description}")
    return 0


def _host_specs(args: argparse.Namespace) -> list[HostSpec]:
    return [parse_host_spec(value) for value in getattr(args, "vm_host", None) or []]


def cmd_hosts(args: argparse.Namespace) -> int:
    """Each VM host: reachable or why not, its QEMU, whether KVM works there and why not, its cores."""
    specs = _host_specs(args)
    if not specs:  # this machine, and every host a config names
        configured = {c.host for c in load_configs(Path(args.config_dir)).values() if c.host}
        specs = [LOCAL, *(parse_host_spec(h) for h in sorted(configured))]
    failed = 0
    for spec in specs:
        host = get_host(spec)
        try:
            host.check()
            usable, why = host.kvm_status()
            print(f"{host.name:40} reachable  QEMU {host.qemu_version(QEMU_BINARY):10} {host.core_count():>3} cores  "
                  f"KVM {'yes' if usable else 'no'}: {why}")
        except (HostError, InfrastructureError) as exc:
            failed += 1
            print(f"{host.name:40} NOT usable: {exc}")
        finally:
            host.close()
    return 1 if failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    kernel = build_kernel()
    print(f"{kernel.path} (build {kernel.build_id}); for gdb: {kernel.symbols}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bundled VM tests against configs and print pytest's summary."""
    pytest_args = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "vm"), "-rfEs", "-p", "no:cacheprovider"]
    for config in _configs(args):
        pytest_args += ["--vm-config", config.name]
    if args.accel:
        pytest_args += ["--vm-accel", args.accel]
    if args.jobs:
        pytest_args += ["-n", args.jobs]
    print("running:", shlex.join(pytest_args), flush=True)
    return subprocess.call(pytest_args, cwd=REPO_ROOT)


def _boot_one(args: argparse.Namespace, artifacts: Path) -> Vm:
    configs = _configs(args)
    if len(configs) != 1:
        raise MmhilError(f"choose one config with --vm-config (have: {', '.join(c.name for c in configs)})")
    result = probe(configs[0])
    if not result.runnable:
        raise MmhilError(f"{configs[0].name} cannot run here: {result.reason}")
    kernel = build_kernel()
    vm = Vm(configs[0], kernel=kernel, accelerator=result.accelerator, artifacts=artifacts)
    return vm.boot()


class Shell(cmd.Cmd):
    intro = ("Type agent commands, e.g. `MmGetPhysicalAddress 0xfffff80000201000` or `kernel_info`.\n"
             "Values: 0x hex, decimal, #hexbytes, 'Tag1' (a pool tag). Monitor: `.gva2gpa VA`, `.xp PA N`, "
             "`.regs`. Leave with `.quit` or Ctrl-D.")

    def __init__(self, vm: Vm) -> None:
        super().__init__()
        self.vm = vm
        self.finished = False
        self.prompt = f"mmhil:{vm.name}> "

    @staticmethod
    def _value(token: str) -> int | bytes:
        if len(token) >= 3 and token[0] == token[-1] == "'":
            return pool_tag(token[1:-1])
        value = decode_value(token)
        if isinstance(value, bool | str):
            raise ValueError(f"{token!r}: requests take integers, #bytes or 'tags'")
        return value

    def postcmd(self, stop: bool, line: str) -> bool:
        return self.finished

    def default(self, line: str) -> None:
        if line == "EOF":
            print()
            self.finished = True
            return
        tokens = line.split()
        if tokens[0].startswith("."):
            self.finished = self._monitor(tokens)
            return
        try:
            values = self.vm.request(tokens[0], *(self._value(t) for t in tokens[1:]))
        except ValueError as exc:
            print(f"error: {exc}")
            return
        except AgentError as exc:
            print(f"err {exc.kind}: {exc.message}")
            return
        except GuestCrash as exc:
            print(exc)
            self.finished = True
            return
        print(" ".join(f"{k}={encode_value(v)}" for k, v in values.items()) or "ok")

    def _monitor(self, tokens: list[str]) -> bool:
        command, rest = tokens[0], tokens[1:]
        try:
            if command == ".quit":
                return True
            if command == ".gva2gpa" and len(rest) == 1:
                pa = self.vm.qemu.gva2gpa(int(rest[0], 0))
                print("Unmapped" if pa is None else f"pa={pa:#x}")
            elif command == ".xp" and len(rest) == 2:
                print(" ".join(f"{v:#018x}" for v in self.vm.qemu.xp(int(rest[0], 0), int(rest[1], 0))))
            elif command == ".regs":
                print(" ".join(f"{k}={v:#x}" for k, v in self.vm.qemu.registers().items()))
            else:
                print("monitor commands: .gva2gpa VA | .xp PA COUNT | .regs | .quit")
        except (ValueError, MmhilError) as exc:
            print(f"error: {exc}")
        return False

    def emptyline(self) -> bool:
        return False  # unlike cmd's default, an empty line does not repeat the last command


def cmd_shell(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mmhil-shell-") as scratch:
        artifacts = Path(args.artifacts) if args.artifacts else Path(scratch)
        vm = _boot_one(args, artifacts)
        try:
            print(f"{vm.name}: booted on {vm.accelerator} in {(vm.boot_seconds or 0) * 1e3:.0f} ms; "
                  f"console log {vm.machine.console_log}")
            Shell(vm).cmdloop()
        finally:
            vm.shutdown()
    return 0


def _runnable_configs(args: argparse.Namespace) -> Iterator[tuple[VmConfig, str]]:
    """The chosen configs that run here, each with its accelerator; a line for each that does not."""
    for config in _configs(args):
        result = probe(config)
        if result.runnable:
            yield config, result.accelerator
        else:
            print(f"{config.name:14} skipped: {result.reason}")


def cmd_bench_boot(args: argparse.Namespace) -> int:
    if args.boots < 3:
        raise MmhilError("--boots must be at least 3 (a median and a spread need them)")
    if args.against is not None and args.phases:
        raise MmhilError("--against compares whole lives: run --phases on each tree by itself")
    kernel = build_kernel()
    if args.against is not None:
        return _bench_boot_against(args, kernel, current_kernel(Path(args.against)))
    print(f"a VM's whole life (start, boot to the agent's hello, shut down) vs. QEMU's floor (the same machine "
          f"started with -S and quit at once), {args.boots} runs each, QEMU {qemu_version()}")
    print(f"{'config':14} {'accel':5} {'boot median':>12} {'floor median':>13} {'ratio':>6}  spread")
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-") as scratch:
        for config, accel in _runnable_configs(args):
            phases: list[dict[str, float]] | None = [] if args.phases else None
            life = bench.paired({config.name: (partial(bench.floor_run, config, kernel, accel),
                                               partial(bench.boot_run, config, kernel, accel,
                                                       Path(scratch) / config.name, phases))}, args.boots)
            floor, boots = life[config.name].floors, life[config.name].boots
            print(f"{config.name:14} {accel:5} {boots.median * 1e3:9.1f} ms {floor.median * 1e3:10.1f} ms "
                  f"{boots.median / floor.median:6.2f}  boot {boots.spread()}; floor {floor.spread()}")
            if phases:
                del phases[:-args.boots]  # the warm-up boot's
                for name in phases[0]:
                    step = bench.Sample(tuple(p[name] for p in phases))
                    print(f"{'':14} {name:42} {step.median * 1e3:8.2f} ms  {step.spread()}")
            if phases and accel == "tcg":
                code = bench.translation_run(config, kernel, Path(scratch) / f"{config.name}-in_asm")
                print(f"{'':14} {'TCG translated (one more boot, -d in_asm)':42} "
                      f"{code.firmware_instructions + code.kernel_instructions:,} guest instructions in "
                      f"{code.blocks:,} blocks: firmware {code.firmware_instructions:,}, "
                      f"kernel {code.kernel_instructions:,}")
    return 0


def _bench_boot_against(args: argparse.Namespace, kernel: KernelImage, other: KernelImage) -> int:
    """This tree's build and another's, booted in turn, each beside its own floor run: whether a change
    to the kernel or firmware moved the boot, told apart from the run-to-run noise."""
    builds = {"this tree": kernel, args.against: other}
    print(f"a VM's whole life less QEMU's floor (run just before it), this tree's build ({kernel.build_id}) and "
          f"{args.against}'s ({other.build_id}) in turn, {args.boots} runs each, QEMU {qemu_version()}")
    print(f"{'config':14} {'build':24} {'boot median':>12} {'floor median':>13} {'ratio':>6}  lead over the floor")
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-") as scratch:
        for config, accel in _runnable_configs(args):
            lives = bench.paired({name: (partial(bench.floor_run, config, image, accel),
                                         partial(bench.boot_run, config, image, accel,
                                                 Path(scratch) / f"{config.name}-{index}"))
                                  for index, (name, image) in enumerate(builds.items())}, args.boots)
            for name, life in lives.items():
                boot, floor, lead = life.boots.median, life.floors.median, life.leads
                print(f"{config.name:14} {name:24} {boot * 1e3:9.1f} ms {floor * 1e3:10.1f} ms {boot / floor:6.2f}  "
                      f"{lead.median * 1e3:.2f} ms, {lead.spread()}")
            change = bench.median_difference(lives["this tree"].leads, lives[args.against].leads)
            verdict = "told apart from the noise" if change.settled else "not told apart from the noise"
            print(f"{'':14} {args.against}'s lead less this tree's: {change.median * 1e3:+.2f} ms "
                  f"(95% bootstrap interval {change.low * 1e3:+.2f} to {change.high * 1e3:+.2f} ms): {verdict}")
    return 0


def _suite_run(workers: str, extra: list[str]) -> float:
    """Seconds the whole suite takes with `-n workers` (it must pass: a failing run's time means nothing).
    The run's whole output goes to artifacts/bench-suite-n<workers>.log, kept for a failure's reasons."""
    command = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests"), "-q", "-p", "no:cacheprovider",
               "-n", workers, *extra]
    log = REPO_ROOT / "artifacts" / f"bench-suite-n{workers}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as output:
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
        raise MmhilError(f"the suite failed with -n {workers}; a timing of a failing run means nothing "
                         f"(whole output: {log}):\n" + "\n".join(failures[:20] + lines[-5:]))
    return elapsed


def cmd_bench_suite(args: argparse.Namespace) -> int:
    """Wall time of the whole suite on one worker and on all, and the parallel efficiency.

    With --vm-host, the VMs run on those hosts and "all" is one worker per core of all of them."""
    if args.runs < 1:
        raise MmhilError("--runs must be at least 1")
    build_kernel()
    specs = _host_specs(args)
    extra = [f"--vm-config={c.name}" for c in _configs(args)] + [f"--vm-host={v}" for v in args.vm_host or []]
    workers = sum(get_host(spec).core_count() for spec in specs) if specs else os.cpu_count() or 1
    where = ", ".join(f"{get_host(s).name} ({get_host(s).core_count()})" for s in specs) or "this machine"
    print(f"full suite wall time, {args.runs} run(s) each, {workers} cores on {where}; efficiency = T(-n 1) / "
          f"({workers} x T(-n {workers}))", flush=True)
    # Alternating puts both worker counts under the same drift of the machine's load over the hour.
    counts = ("1", str(workers))
    taken: tuple[list[float], list[float]] = ([], [])
    for run in range(1, args.runs + 1):
        for count, times in zip(counts, taken, strict=True):
            times.append(_suite_run(count, extra))
            print(f"run {run}: -n {count} {times[-1]:.1f} s", flush=True)
    serial, parallel = (bench.Sample(tuple(times)) for times in taken)
    print(f"-n 1     median {serial.median:7.1f} s   {serial.spread('s')}")
    print(f"-n {workers:<5} median {parallel.median:7.1f} s   {parallel.spread('s')}")
    print(f"speed-up {serial.median / parallel.median:.2f}x, parallel efficiency "
          f"{serial.median / (workers * parallel.median):.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmhil", description=__doc__)
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="where the VM configs are")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_configs(p: argparse.ArgumentParser, accel: bool = True) -> argparse.ArgumentParser:
        p.add_argument("--vm-config", action="append", metavar="NAME",
                       help="config name or group:G (repeatable; default: all)")
        if accel:
            p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the configs' accelerator")
        return p

    with_configs(sub.add_parser("configs", help="list VM configs and whether this host can run them"),
                 ).set_defaults(func=cmd_configs)
    sub.add_parser("build", help="build the guest kernel").set_defaults(func=cmd_build)
    hosts = sub.add_parser("hosts", help="VM hosts: reachable, QEMU version, KVM (and why not), cores")
    hosts.add_argument("--vm-host", action="append", metavar="HOST",
                       help="local or ssh://user@host[:port][#...] (repeatable; default: local and the configs' hosts)")
    hosts.set_defaults(func=cmd_hosts)
    run = with_configs(sub.add_parser("run", help="boot configs and run the bundled VM tests on them"))
    run.add_argument("-n", "--jobs", help="parallel workers (pytest-xdist), e.g. auto")
    run.set_defaults(func=cmd_run)
    shell = with_configs(sub.add_parser("shell", help="boot a VM and type agent commands at it"))
    shell.add_argument("--artifacts", help="keep the VM's logs here")
    shell.set_defaults(func=cmd_shell)
    bench_parser = sub.add_parser("bench", help="measurements, each beside its reference")
    bench_sub = bench_parser.add_subparsers(dest="bench", required=True)
    boot = with_configs(bench_sub.add_parser("boot", help="boot-to-agent-ready against QEMU's floor"))
    boot.add_argument("--boots", type=int, default=10, help="runs per config, at least 3 (default 10)")
    boot.add_argument("--phases", action="store_true",
                      help="also show where each boot's time goes: QEMU, firmware, each guest phase, console output")
    boot.add_argument("--against", metavar="BUILD_DIR",
                      help="another tree's vm_images/build (or a copy of one): boot both builds in turn and print "
                           "the difference of their leads over the floor, with its interval")
    boot.set_defaults(func=cmd_bench_boot)
    suite = with_configs(bench_sub.add_parser("suite", help="suite wall time with -n 1 and -n auto"), accel=False)
    suite.add_argument("--runs", type=int, default=1, help="runs per worker count, at least 1 (default 1)")
    suite.add_argument("--vm-host", action="append", metavar="HOST",
                       help="run the VMs there (repeatable; docs/hosts.md); -n is then the hosts' cores together")
    suite.set_defaults(func=cmd_bench_suite)
    bench_verify.add_parser(bench_sub)
    bench_ddi.add_parser(bench_sub)
    fuzz_cli.add_parsers(sub)
    bench_matrix.add_parser(bench_sub)
    bench_tcg.add_parser(bench_sub)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MmhilError as exc:
        print(f"mmhil: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
