"""The `mmhil fuzz frames`, `mmhil fuzz ddi` and `mmhil soak` subcommands.

Wiring: `harness.cli.main` calls `add_parsers(sub)`. Every command boots one VM config into
`--artifacts` (default `artifacts/fuzz/<command>-seed<S>/`), writes its findings there as
`findings.jsonl`, prints its figures, and exits 1 on any finding (0 when there is none).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.build import REPO_ROOT
from harness.config import DEFAULT_CONFIG_DIR
from harness.errors import MmhilError
from harness.fuzz import ddi_run, frames_run, soak
from harness.fuzz.session import FindingLog, FuzzSession


def _common(p: argparse.ArgumentParser, seed_help: str) -> None:
    p.add_argument("--vm-config", default="default", metavar="NAME", help="the VM config to boot (default: default)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), help="override the config's accelerator")
    p.add_argument("--seed", type=int, default=1, help=seed_help)
    p.add_argument("--artifacts", metavar="DIR", help="VM logs and findings.jsonl (default: artifacts/fuzz/...)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fuzz = sub.add_parser("fuzz", help="fuzz the agent's frames or the DDIs (docs/fuzzing.md)")
    fuzz_sub = fuzz.add_subparsers(dest="fuzz", required=True)
    frames = fuzz_sub.add_parser("frames", help="random and mutated agent frames on COM2 and in the mailbox")
    _common(frames, "the run's seed: case I of seed S is always the same frame (default 1)")
    frames.add_argument("--count", type=int, default=100_000, help="cases to send (default 100000)")
    frames.add_argument("--start", type=int, default=0, help="first case index (replay: --start I --count 1)")
    frames.add_argument("--check-every", type=int, default=100, help="a liveness hello every N cases (default 100)")
    frames.add_argument("--max-deaths", type=int, default=10, help="stop after this many agent deaths (default 10)")
    frames.set_defaults(func=cmd_fuzz_frames)
    ddi = fuzz_sub.add_parser("ddi", help="random well-formed DDI call sequences against the host's model")
    _common(ddi, "the run's seed: --seed S --count N replays the same N calls (default 1)")
    ddi.add_argument("--count", type=int, default=10_000, help="calls to draw (default 10000)")
    ddi.add_argument("--run-length", type=int, default=200,
                     help="calls between two full teardowns with the zero-outstanding check (default 200)")
    ddi.add_argument("--stop-rate", type=float, default=0.01,
                     help="share of calls drawn as documented misuse that must bugcheck (default 0.01)")
    ddi.set_defaults(func=cmd_fuzz_ddi)
    soak_parser = sub.add_parser("soak", help="allocate/free and map/unmap every family, with leak counts")
    _common(soak_parser, "seeds the sizes and the order of the families (default 1)")
    soak_parser.add_argument("--calls", type=int, default=100_000, help="DDI calls to make (default 100000)")
    soak_parser.add_argument("--check-every", type=int, default=5000,
                             help="a leak checkpoint every N calls (default 5000)")
    soak_parser.add_argument("--verify-every", type=int, default=100,
                             help="verify each family's mapping three ways every N cycles (default 100)")
    soak_parser.set_defaults(func=cmd_soak)


def _artifacts(args: argparse.Namespace, name: str) -> Path:
    return Path(args.artifacts) if args.artifacts else REPO_ROOT / "artifacts" / "fuzz" / f"{name}-seed{args.seed}"


def _replay(args: argparse.Namespace, command: str, extra: str) -> str:
    return shlex.join([".venv/bin/mmhil", *command.split(), "--vm-config", args.vm_config, "--seed",
                       str(args.seed)]) + " " + extra


def cmd_fuzz_frames(args: argparse.Namespace) -> int:
    if args.count < 1 or args.start < 0 or args.check_every < 1:
        raise MmhilError("--count and --check-every must be at least 1, --start at least 0")
    artifacts = _artifacts(args, "frames")
    session = FuzzSession.open(args.vm_config, Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR),
                               args.accel, artifacts)
    findings = FindingLog(artifacts / "findings.jsonl", echo=sys.stdout)
    indices = range(args.start, args.start + args.count)
    runner = frames_run.FrameRunner(session, args.seed, findings, check_every=args.check_every,
                                    max_deaths=args.max_deaths,
                                    replay=_replay(args, "fuzz frames", "--start {index} --count 1"))
    try:
        stats = runner.run(indices)
    finally:
        session.close()
    print(frames_run.report(session, args.seed, indices, stats))
    print(f"findings: {len(findings.findings)} ({findings.path}); VM logs in {artifacts}")
    return 1 if findings.findings else 0


def cmd_fuzz_ddi(args: argparse.Namespace) -> int:
    if args.count < 1 or args.run_length < 1 or not 0 <= args.stop_rate <= 1:
        raise MmhilError("--count and --run-length must be at least 1, --stop-rate between 0 and 1")
    artifacts = _artifacts(args, "ddi")
    session = FuzzSession.open(args.vm_config, Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR),
                               args.accel, artifacts)
    findings = FindingLog(artifacts / "findings.jsonl", echo=sys.stdout)
    replay = _replay(args, "fuzz ddi", "--count {count}") + f" --run-length {args.run_length} --stop-rate " \
        f"{args.stop_rate}"
    runner = ddi_run.DdiRunner(session, args.seed, findings, run_length=args.run_length, stop_rate=args.stop_rate,
                               replay=replay)
    try:
        stats = runner.run(args.count)
    finally:
        session.close()
    print(ddi_run.report(session, args.seed, args.count, stats, len(findings.findings)))
    print(f"findings: {len(findings.findings)} ({findings.path}); VM logs in {artifacts}")
    return 1 if findings.findings else 0


def cmd_soak(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.check_every < 1 or args.verify_every < 1:
        raise MmhilError("--calls, --check-every and --verify-every must be at least 1")
    artifacts = _artifacts(args, "soak")
    session = FuzzSession.open(args.vm_config, Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR),
                               args.accel, artifacts)
    findings = FindingLog(artifacts / "findings.jsonl", echo=sys.stdout)
    runner = soak.Soak(session, args.seed, findings, check_every=args.check_every, verify_every=args.verify_every)
    try:
        stats = runner.run(args.calls)
    finally:
        session.close()
    print(soak.report(session, args.seed, stats))
    print(f"findings: {len(findings.findings)} ({findings.path}); VM logs in {artifacts}")
    return 1 if findings.findings else 0
