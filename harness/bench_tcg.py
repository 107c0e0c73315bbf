"""`mmhil bench tcg`: what TCG charges on this machine for a translated block and for an instruction,
beside a ROM that does nothing, measured in the same run.

A TCG boot costs what QEMU translates, and this splits that cost. Each case is a 64 KiB ROM that
QEMU runs once from the reset vector, in real mode, on the config's machine. The ROM holds straight
code, then an `out` to `isa-debug-exit`, which ends QEMU. A case's whole life (start, `cont`,
the code, exit) less the empty ROM's, divided by its count, is the price of one unit:
- register instructions in blocks of TCG's maximum length;
- memory loads;
- blocks of one instruction (`jmp $+2`).
The figures explain `bench boot --phases`'s block and instruction counts (docs/performance.md).
Wiring into `mmhil`: `harness.cli.main` calls `harness.bench_tcg.add_parser(bench_sub)`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness.bench import Sample
from harness.config import DEFAULT_CONFIG_DIR, VmConfig, load_configs
from harness.errors import InfrastructureError
from harness.machine import EXIT_PORT, STATUS_POWERED_OFF, LaunchPlan, QemuMachine
from harness.probe import qemu_version

ROM_SIZE = 0x10000
RESET_VECTOR = 0xFFF0  # real mode starts at CS base 0xFFFF0000, IP 0xFFF0: the ROM's last 16 bytes
# mov al, 0; out EXIT_PORT, al (isa-debug-exit: QEMU ends with status 1); hlt and jmp back, should it not.
HLT = 0xF4
EXIT_CODE = bytes((0xB0, 0x00, 0xE6, EXIT_PORT, HLT, 0xEB, 0xFD))
JMP_NEAR = 0xE9


def rom_image(body: bytes) -> bytes:
    """A ROM that runs `body` from offset 0, then ends QEMU through isa-debug-exit."""
    code = body + EXIT_CODE
    if len(code) > RESET_VECTOR:
        raise ValueError(f"a {len(body)}-byte body and its exit overrun the reset vector at {RESET_VECTOR:#x}")
    image = bytearray([HLT]) * ROM_SIZE
    image[:len(code)] = code
    to_start = (0 - (RESET_VECTOR + 3)) & 0xFFFF  # a near jump's displacement counts from the next instruction
    image[RESET_VECTOR:RESET_VECTOR + 3] = bytes((JMP_NEAR, to_start & 0xFF, to_start >> 8))
    return bytes(image)


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    count: int
    unit: str


def cases() -> tuple[Case, ...]:
    return (
        Case("30,000 `inc ax`, straight (59 blocks)", b"\x40" * 30_000, 30_000, "an instruction"),
        Case("15,000 loads `mov ax, [bx]`, straight", b"\x8b\x07" * 15_000, 15_000, "a load"),
        Case("15,000 blocks of one `jmp $+2`", b"\xeb\x00" * 15_000, 15_000, "a block"),
    )


def rom_run(config: VmConfig, name: str, image: bytes, timeout: float = 30.0) -> float:
    """Seconds of QEMU's whole life running the ROM `image` on this machine under TCG, to its exit."""
    with tempfile.TemporaryDirectory(prefix="mmhil-bench-tcg-") as scratch:
        Path(scratch).chmod(0o755)  # QEMU may run as a user of its own (harness.hosts.local) and reads the ROM
        rom = Path(scratch) / f"{name}.rom"
        rom.write_bytes(image)
        plan = LaunchPlan(kernel=None, accelerator="tcg", artifacts=Path(scratch), shared_ram=False, firmware=rom)
        machine = QemuMachine(config, plan)
        try:
            machine.launch(timeout)
            machine.resume()  # the ROM ends QEMU, often before `cont`'s answer is read: it is not waited for
            status = machine.wait_exit(timeout)
            ended = time.monotonic()
            if status != STATUS_POWERED_OFF:
                raise InfrastructureError(f"{name}: QEMU ended with status {status!r}, not the ROM's exit "
                                          f"({STATUS_POWERED_OFF}); its stderr: {machine.stderr_tail(20)!r}")
            return ended - machine.launched_at
        finally:
            machine.shutdown()


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `tcg` under `mmhil bench`."""
    p: argparse.ArgumentParser = bench_sub.add_parser(
        "tcg", help="TCG's price of a translated block and of an instruction, beside an empty ROM")
    p.add_argument("--vm-config", default="default", metavar="NAME",
                   help="the config whose machine runs the ROMs (default: default)")
    p.add_argument("--runs", type=int, default=15, help="runs of each ROM, at least 3 (default 15)")
    p.set_defaults(func=cmd_bench_tcg)
    return p


def cmd_bench_tcg(args: argparse.Namespace) -> int:
    if args.runs < 3:
        raise SystemExit("mmhil bench tcg: --runs must be at least 3 (a spread needs them)")
    configs = load_configs(DEFAULT_CONFIG_DIR)
    if args.vm_config not in configs:
        raise SystemExit(f"mmhil bench tcg: no VM config {args.vm_config!r} (have: {', '.join(sorted(configs))})")
    # The ROM replaces the firmware: a config that boots another one runs it as its -bios all the same.
    config = replace(configs[args.vm_config], firmware="mmhil")
    roms = {"empty": rom_image(b"")} | {case.name: rom_image(case.body) for case in cases()}
    runs: dict[str, list[float]] = {name: [] for name in roms}
    for round_ in range(args.runs + 1):  # alternating, after one unmeasured round (cold caches)
        for i, (name, image) in enumerate(roms.items()):
            life = rom_run(config, f"case{i}", image)
            if round_:
                runs[name].append(life)
    samples = {name: Sample(tuple(values)) for name, values in runs.items()}
    print(f"TCG's price on {config.name}'s machine ({config.machine.split(',')[0]}, -cpu {config.cpu}), a ROM's "
          f"whole life, {args.runs} runs each, QEMU {qemu_version()}")
    empty = samples["empty"]
    print(f"{'a ROM that exits at once (reference)':48} {empty.median * 1e3:7.2f} ms  {empty.spread()}")
    for case in cases():
        sample = samples[case.name]
        each = (sample.median - empty.median) / case.count
        print(f"{case.name:48} {sample.median * 1e3:7.2f} ms  {sample.spread()}  "
              f"{each * 1e6:.2f} us {case.unit}")
    return 0
