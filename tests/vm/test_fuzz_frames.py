"""The frame fuzzer on a real agent: a seeded run of 1,000 cases on both channels, and proof that its
checks see a wrong answer."""

from pathlib import Path

from harness.fuzz.frames import COM2, MAILBOX, MALFORMED, OK, Expected, FrameCase, Send
from harness.fuzz.frames_run import FrameRunner
from harness.fuzz.session import FindingLog, SingleVm
from harness.vm import Vm


def test_a_seeded_thousand_frames_kill_nothing_and_get_the_documented_answers(vm: Vm, tmp_path: Path) -> None:
    findings = FindingLog(tmp_path / "findings.jsonl")
    runner = FrameRunner(SingleVm(vm), 20240, findings, check_every=100, max_deaths=1)
    stats = runner.run(range(1000))
    assert [f.line() for f in findings.findings] == []
    assert stats.death_count == 0 and stats.unexpected == 0
    assert stats.cases == 1000 and stats.liveness_checks == 10
    channels = [COM2, MAILBOX] if vm.agent.mailbox is not None else [COM2]
    for channel in channels:
        assert stats.frames[channel] > 300, f"both channels carry cases: {stats.frames}"
        assert stats.answers[(channel, OK)] > 50 and stats.answers[(channel, MALFORMED)] > 50, stats.answers
    assert stats.leaks == {} and stats.frames_free[0] == stats.frames_free[1]


def test_an_answer_other_than_the_documented_one_is_a_finding_with_its_case(vm: Vm, tmp_path: Path) -> None:
    findings = FindingLog(tmp_path / "findings.jsonl")
    runner = FrameRunner(SingleVm(vm), 1, findings)
    wrong = FrameCase(1, 7, "planted", (Send(COM2, b"5 hello\n"),), ((Expected(5, MALFORMED),),))
    problems = runner.run_case(vm, wrong)
    assert problems == ["expected =5 malformed, got =5 ok"]
    wrong_id = FrameCase(1, 8, "planted", (Send(COM2, b"6 hello\n"),), ((Expected(7, OK, "hello"),),))
    assert "wrong id" in runner.run_case(vm, wrong_id)[0]
    if vm.agent.mailbox is not None:
        batch = (Send(MAILBOX, b"8 ping\n9 ping"),)
        wrong_second = FrameCase(1, 9, "planted", batch, ((Expected(8, OK, "ping"), Expected(9, MALFORMED)),))
        assert runner.run_case(vm, wrong_second) == ["expected =9 malformed, got =9 ok"]
    assert runner.resync(vm) == [], "nothing is left unanswered"
    assert runner.liveness(vm) == ""
