"""Unit tests of `mmhil bench verify`'s sampling, statistics and report (no VM)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from harness import bench_verify
from harness.bench_verify import PathResult, add_parser, report, sample_vas
from harness.oracle.paging import is_canonical
from harness.oracle.synth import synthetic_address_space
from harness.oracle.walker import snapshot, translate_many


@pytest.mark.parametrize("levels", [4, 5])
def test_sample_vas_are_mostly_mapped_and_all_canonical(levels: int) -> None:
    sp = synthetic_address_space(levels, ram_size=4 << 20)
    snap = snapshot(sp.memory, sp.cr3, sp.mode)
    vas = sample_vas(snap, 10_000, seed=1)
    assert vas.dtype == np.uint64 and vas.size == 10_000
    assert all(is_canonical(int(v), levels) for v in vas.tolist()[::7])
    mapped = translate_many(sp.memory, sp.cr3, vas, sp.mode).ok.mean()
    assert 0.88 <= mapped <= 0.95


def test_path_result_statistics() -> None:
    p = PathResult("x", [])
    for n in (100, 200, 300, 400):
        p.add(n, 1.0)
    assert p.median == 250 and p.translations == 1000 and p.seconds == 4.0
    assert p.spread().startswith("IQR ") and "min 100, max 400" in p.spread()
    assert PathResult("y", [5.0]).spread() == "n/a"


def test_report_shows_rates_ratios_and_targets() -> None:
    vm = SimpleNamespace(config=SimpleNamespace(name="default", machine="microvm", paging_levels=4, memory_mib=256),
                         accelerator="tcg", host=SimpleNamespace(name="local", qemu_version=lambda binary: "7.2.22"),
                         machine=SimpleNamespace(binary="qemu-system-x86_64"))
    shared, monitor, qemu = PathResult("host walk, shared RAM (batch)", []), \
        PathResult("host walk, monitor (batch)", []), PathResult("QEMU gva2gpa (one call per VA)", [])
    for _ in range(3):
        shared.add(5_000_000, 1.0)
        monitor.add(1_000_000, 1.0)
        qemu.add(1000, 1.0)
    text = report(vm, [shared, monitor, qemu], [], rounds=3, batch=1000, seconds=3)  # type: ignore[arg-type]
    assert "host walk, shared RAM (batch)" in text and "5,000,000" in text and "1.00 ms per call" in text
    assert "on local, QEMU 7.2.22" in text
    assert "shared / gva2gpa 5,000x" in text and "monitor / gva2gpa 1,000x" in text
    assert "shared >= 1,000,000/s met" in text and "shared >= 1000x gva2gpa met" in text
    assert "3,000 gva2gpa answers, 0 disagreeing" in text
    no_shared = report(vm, [monitor, qemu], [(0xFFFFF80000201000, 0x201000, None)], rounds=3, batch=1000,
                       seconds=3)  # type: ignore[arg-type]
    assert "no shared RAM backend" in no_shared
    assert "1 disagreeing" in no_shared
    assert "VA 0xfffff80000201000: host walk 0x201000, gva2gpa unmapped" in no_shared, "the disagreement is named"


def test_add_parser_registers_verify_with_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["verify"])
    assert (args.vm_config, args.seconds, args.func) == ("default", 10.0, bench_verify.cmd_bench_verify)
    args = parser.parse_args(["verify", "--vm-config", "la57", "--seconds", "3"])
    assert (args.vm_config, args.seconds) == ("la57", 3.0)
