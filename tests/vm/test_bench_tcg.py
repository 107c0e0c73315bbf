"""`mmhil bench tcg` on real QEMU: each ROM runs to its exit, and one that never gets there is named."""

import re
import subprocess
import sys

import pytest

from harness.bench_tcg import cases, rom_image, rom_run
from harness.config import load_configs
from harness.errors import InfrastructureError

MMHIL = [sys.executable, "-m", "harness.cli"]


def test_every_case_rom_runs_to_its_exit_through_isa_debug_exit() -> None:
    config = load_configs()["default"]
    for case in (*cases(), None):
        assert rom_run(config, "case", rom_image(case.body if case else b"")) > 0


def test_a_rom_that_never_reaches_its_exit_is_named_once_the_wait_ends() -> None:
    with pytest.raises(InfrastructureError, match=r"^spins: QEMU ended with status None, not the ROM's exit"):
        rom_run(load_configs()["default"], "spins", rom_image(b"\xeb\xfe"), timeout=2.0)  # jmp $: no exit


def test_bench_tcg_prints_each_unit_price_beside_the_empty_rom() -> None:
    result = subprocess.run([*MMHIL, "bench", "tcg", "--runs", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^a ROM that exits at once \(reference\)\s+[\d.]+ ms  IQR", out, re.M), out
    for unit in ("an instruction", "a load", "a block"):
        assert re.search(rf"^\d.*\s[\d.]+ ms  IQR .*\s-?[\d.]+ us {unit}$", out, re.M), f"no line for {unit}:\n{out}"


def test_bench_tcg_refuses_too_few_runs_and_an_unknown_config() -> None:
    few = subprocess.run([*MMHIL, "bench", "tcg", "--runs", "2"], capture_output=True, text=True, timeout=60)
    assert few.returncode != 0 and "--runs must be at least 3" in few.stderr
    unknown = subprocess.run([*MMHIL, "bench", "tcg", "--vm-config", "nosuch"], capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode != 0 and "no VM config 'nosuch'" in unknown.stderr
