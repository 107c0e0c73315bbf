"""`mmhil fuzz frames`: send the cases of harness.fuzz.frames, check every answer, keep the agent alive.

Each case's sends go out through the agent client's public raw paths (`send_raw` on COM2, `post_raw`
into the mailbox); then exactly the answers the model expects are read, in order, and each must
carry the expected id and kind. Every `check_every` cases, and at the end, a `hello` through the
client's ordinary request path (alternately COM2 and the mailbox) proves the agent still serves. A
`!bugcheck`, a QEMU death, a silent agent, a restart or a wrong answer is a finding, saved with its
seed and case index; after a death the VM is rebooted and the run goes on.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from harness.agent.client import AgentStopped, ChannelClosed, ChannelTimeout
from harness.agent.codec import PROTOCOL_VERSION, Frame, Notice, Response
from harness.errors import MmhilError, ProtocolError
from harness.fuzz.frames import (
    COM2,
    ERROR_KINDS,
    HARMLESS_COMMANDS,
    MAILBOX,
    OK,
    RESERVED_IDS,
    Expected,
    FrameCase,
    FrameGenerator,
    Send,
)
from harness.fuzz.session import Finding, FindingLog, VmSource, nonzero_outstanding
from harness.vm import Vm, bugcheck_record

DEATHS = ("bugcheck", "QEMU died", "silent agent", "agent restarted")


class CaseDeath(Exception):
    """The agent stopped answering during a case: `kind` is one of DEATHS."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


@dataclass
class Slowest:
    seconds: float = 0.0
    index: int = -1
    case: str = ""


@dataclass
class FrameStats:
    cases: int = 0
    frames: Counter[str] = field(default_factory=Counter)  # per channel
    mailbox_lines: int = 0
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, kind)
    unexpected: int = 0
    deaths: Counter[str] = field(default_factory=Counter)
    liveness_checks: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {COM2: [], MAILBOX: []})
    slowest: Slowest = field(default_factory=Slowest)
    leaks: dict[str, int] = field(default_factory=dict)
    frames_free: tuple[int, int] = (0, 0)
    stopped_early: str = ""
    wall_seconds: float = 0.0

    @property
    def death_count(self) -> int:
        return sum(self.deaths.values())


def _frame_problem(expected: Expected, frame: Frame) -> str:
    """Why `frame` is not the answer `expected` describes ('' when it is)."""
    if not isinstance(frame, Response):
        return f"expected {expected.describe()}, got the notice !{frame.kind}"
    got = f"={'?' if frame.request_id is None else frame.request_id} {'ok' if frame.ok else frame.error_kind}"
    if frame.request_id != expected.request_id:
        return f"expected {expected.describe()}, got {got} (wrong id)"
    if expected.kind == OK:
        if not frame.ok:
            return f"expected {expected.describe()}, got {got} {frame.error_message!r}"
        missing = [k for k in HARMLESS_COMMANDS[expected.command] if k not in frame.values]
        if missing:
            return f"{expected.command} answered without {missing}: {frame.values}"
        if expected.command == "hello" and frame.values.get("proto") != PROTOCOL_VERSION:
            return f"hello says proto={frame.values.get('proto')!r}, not {PROTOCOL_VERSION}"
        if expected.command == "read_va":
            data, length = frame.values.get("data"), int(expected.values[1])
            if not isinstance(data, bytes) or len(data) != length:
                shown = f"{len(data)} bytes" if isinstance(data, bytes) else repr(data)
                return f"read_va of {length:#x} bytes answered {shown}"
        return ""
    if frame.ok or frame.error_kind != expected.kind:
        return f"expected {expected.describe()}, got {got}"
    if "msg" not in frame.values:
        return f"the error answer has no msg: {frame.values}"
    return ""


class FrameRunner:
    def __init__(self, session: VmSource, seed: int, findings: FindingLog, *, check_every: int = 100,
                 max_deaths: int = 10, replay: str = "", out: TextIO = sys.stdout) -> None:
        self.session = session
        self.seed = seed
        self.findings = findings
        self.check_every = check_every
        self.max_deaths = max_deaths
        self.replay = replay  # the command line that replays a case, with {index} for its index
        self.out = out
        self.stats = FrameStats()
        self._sync_ids = itertools.cycle(RESERVED_IDS)
        self._liveness_on_com2 = False
        self._free_before = 0

    # -- one case --------------------------------------------------------------------------------

    def _read(self, vm: Vm) -> Frame:
        try:
            return vm.agent.read_frame(vm.timeout)
        except AgentStopped as exc:
            record = bugcheck_record(exc.notice)
            raise CaseDeath("bugcheck", record.stop_line()) from exc
        except ChannelClosed as exc:
            vm.machine.wait_exit(5.0)
            raise CaseDeath("QEMU died", f"exit status {vm.machine.exit_status}; "
                            f"stderr: {vm.machine.stderr_tail(5)!r}") from exc
        except ChannelTimeout as exc:
            state = "QEMU still runs" if vm.machine.running else f"QEMU exited ({vm.machine.exit_status})"
            raise CaseDeath("silent agent", f"no answer within {vm.timeout:g} s; {state}") from exc

    def _send(self, vm: Vm, send: Send, answers: tuple[Expected, ...]) -> None:
        try:
            if send.channel == COM2:
                vm.agent.send_raw(send.data, vm.timeout)
            else:  # an answer that spilled to COM2 would be matched by the id of a one-line request
                only_id = answers[0].request_id if len(answers) == 1 else None
                vm.agent.post_raw(send.data, only_id, vm.timeout)
        except ChannelClosed as exc:
            raise CaseDeath("QEMU died", f"while sending: {exc}") from exc
        except ChannelTimeout as exc:
            raise CaseDeath("silent agent", f"the agent stopped taking bytes: {exc}") from exc

    def run_case(self, vm: Vm, case: FrameCase) -> list[str]:
        """Sends the case and reads its answers; the problems found (an empty list: all as expected).

        Each send's answers are read before the next send goes: the host reads COM2 and the mailbox
        as either has something, so answers on the two channels are in the agent's order only if
        one channel at a time has any outstanding.
        """
        start = time.perf_counter()
        problems = []
        for send, answers in zip(case.sends, case.answers, strict=True):
            self._send(vm, send, answers)
            for expected in answers:
                try:
                    frame = self._read(vm)
                except ProtocolError as exc:
                    problems.append(f"not a frame: {exc}")
                    continue
                if isinstance(frame, Notice) and frame.kind == "hello":
                    raise CaseDeath("agent restarted", f"!hello while waiting for {expected.describe()}")
                problem = _frame_problem(expected, frame)
                if problem:
                    problems.append(problem)
                else:
                    self.stats.answers[(send.channel, expected.kind)] += 1
        seconds = time.perf_counter() - start
        if len(case.sends) == 1:
            self.stats.times[case.sends[0].channel].append(seconds)
        if seconds > self.stats.slowest.seconds:
            self.stats.slowest = Slowest(seconds, case.index, case.describe(100))
        return problems

    def resync(self, vm: Vm) -> list[str]:
        """After a wrong answer: a hello on COM2 with a reserved id, and every frame before its answer."""
        sync_id = next(self._sync_ids)
        vm.agent.send_raw(f"{sync_id} hello\n".encode())
        extra = []
        while True:
            try:
                frame = self._read(vm)
            except ProtocolError as exc:
                extra.append(f"not a frame: {exc}")
                continue
            if isinstance(frame, Response) and frame.request_id == sync_id:
                return extra
            extra.append(f"extra frame {frame}")

    def liveness(self, vm: Vm) -> str:
        """A hello through the client's ordinary request path; '' when it answered as it must."""
        self.stats.liveness_checks += 1
        unmatched = len(vm.agent.unmatched)
        vm.agent.use_mailbox = not self._liveness_on_com2
        self._liveness_on_com2 = not self._liveness_on_com2
        try:
            proto = vm.request("hello").get("proto")
        finally:
            vm.agent.use_mailbox = True
        if proto != PROTOCOL_VERSION:
            return f"hello says proto={proto!r}"
        if len(vm.agent.unmatched) != unmatched:
            return f"frames no request asked for: {vm.agent.unmatched[unmatched:]}"
        return ""

    # -- the run ---------------------------------------------------------------------------------

    def _finding(self, kind: str, index: int, what: str, detail: str = "") -> None:
        self.findings.add(Finding(kind, self.seed, index, what, detail, self.replay.format(index=index),
                                  str(self.session.boot_folder)))

    def _death(self, index: int, death: CaseDeath, case: FrameCase | None) -> None:
        self.stats.deaths[death.kind] += 1
        what = f"{death.kind} after case {index}" + (f" ({case.label}): {case.describe()}" if case else "")
        self._finding(f"death: {death.kind}", index, what, death.detail)
        if self.stats.death_count >= self.max_deaths:
            self.stats.stopped_early = f"stopped after {self.stats.death_count} deaths"
            return
        self._free_before = self.session.reboot().mm.frame_stats().free

    def run(self, indices: range) -> FrameStats:
        started = time.monotonic()
        vm = self.session.vm
        info = vm.mm.kernel_info()
        generator = FrameGenerator(self.seed, text=(info.text_start, info.text_end),
                                   mailbox=vm.agent.mailbox is not None)
        self._free_before = vm.mm.frame_stats().free
        for count, index in enumerate(indices, 1):
            case = generator.case(index)
            vm = self.session.vm
            self.stats.cases += 1
            for channel in (COM2, MAILBOX):
                self.stats.frames[channel] += case.frames(channel)
            self.stats.mailbox_lines += case.mailbox_lines()
            try:
                problems = self.run_case(vm, case)
                if problems:
                    self.stats.unexpected += len(problems)
                    extra = self.resync(vm)
                    self.stats.unexpected += len(extra)
                    self._finding("unexpected reply", index, f"case ({case.label}) {case.describe()}",
                                  "; ".join(problems + extra))
                    if vm.agent.mailbox is not None and not vm.agent.mailbox_ready:
                        raise CaseDeath("silent agent", "a mailbox request was never answered")
                if count % self.check_every == 0 or count == len(indices):
                    problem = self.liveness(vm)
                    if problem:
                        self.stats.unexpected += 1
                        self._finding("unexpected reply", index, "liveness hello", problem)
            except CaseDeath as death:
                self._death(index, death, case)
            except MmhilError as exc:  # a liveness hello that found the VM dead
                self._death(index, CaseDeath("bugcheck" if "bugcheck" in str(exc) else "silent agent",
                                             str(exc).splitlines()[0]), case)
            if self.stats.stopped_early:
                break
            if count % 10_000 == 0:
                print(f"  ... {count} cases, {self.stats.death_count} deaths, {self.stats.unexpected} unexpected",
                      file=self.out, flush=True)
        if not self.stats.stopped_early:
            self._final_checks(indices)
        self.stats.wall_seconds = time.monotonic() - started
        return self.stats

    def _final_checks(self, indices: range) -> None:
        """Nothing outstanding, and as many free frames as when this boot's run began."""
        vm = self.session.vm
        last = indices[-1] if indices else 0
        self.stats.leaks = nonzero_outstanding(vm.mm.outstanding())
        free_before, free_after = self._free_before, vm.mm.frame_stats().free
        self.stats.frames_free = (free_before, free_after)
        if self.stats.leaks:
            self._finding("leak", last, f"outstanding after the run: {self.stats.leaks}")
        if free_after != free_before:
            self._finding("leak", last, f"free frames {free_before} before, {free_after} after")


def report(session: VmSource, seed: int, indices: range, stats: FrameStats) -> str:
    def kinds(channel: str) -> str:
        return ", ".join(f"{kind} {stats.answers[(channel, kind)]:,}" for kind in (OK, *ERROR_KINDS))

    def median(channel: str) -> str:
        times = stats.times[channel]
        if not times:
            return "n/a"
        q = statistics.quantiles(times, n=100) if len(times) > 1 else [times[0]] * 99
        return f"{statistics.median(times) * 1e3:.2f} ms (p99 {q[98] * 1e3:.2f} ms)"

    errors = sum(n for (_, kind), n in stats.answers.items() if kind != OK)
    lines = [
        f"mmhil fuzz frames: {session.describe()}, seed {seed}, cases {indices.start}..{indices.stop - 1}",
        f"cases run: {stats.cases:,}; frames sent: COM2 {stats.frames[COM2]:,} lines, mailbox "
        f"{stats.frames[MAILBOX]:,} requests ({stats.mailbox_lines:,} lines)",
        f"answers as documented on COM2: {kinds(COM2)}",
        f"answers as documented in the mailbox: {kinds(MAILBOX)}",
        f"documented-error replies: {errors:,}; unexpected replies: {stats.unexpected}",
        f"agent deaths: {stats.death_count}" + (f" ({dict(stats.deaths)})" if stats.deaths else "")
        + f"; liveness hellos: {stats.liveness_checks}; boots: {session.boots}",
        f"reply time, one-send cases: COM2 median {median(COM2)}; mailbox median {median(MAILBOX)}",
        f"slowest reply: {stats.slowest.seconds * 1e3:.1f} ms, case {stats.slowest.index}: {stats.slowest.case}",
        f"left behind: outstanding {stats.leaks or 'all zero'}; free frames {stats.frames_free[0]} before, "
        f"{stats.frames_free[1]} after",
        f"wall time {stats.wall_seconds:.1f} s" + (f"; {stats.stopped_early}" if stats.stopped_early else ""),
    ]
    return "\n".join(lines)
