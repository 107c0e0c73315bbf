"""The frame fuzzer's model of docs/agent-protocol.md, and its generator, without a guest."""

import re
from pathlib import Path

import pytest

from harness.agent.mailbox import DOORBELL_REQUEST
from harness.fuzz.frames import (
    AGENT_COMMANDS,
    BAD_ARGUMENT,
    COM2,
    HARMLESS_COMMANDS,
    LINE_MAX,
    MAILBOX,
    MAILBOX_ANSWER_BUDGET,
    MAILBOX_REQUEST_MAX,
    MALFORMED,
    OK,
    OVERSIZED,
    RESERVED_IDS,
    UNKNOWN_COMMAND,
    Expected,
    FrameGenerator,
    answer_bound,
    expect_com2,
    expect_mailbox,
    expect_request,
    parse_value,
    split_tokens,
)

DRIVER_SRC = Path(__file__).resolve().parents[2] / "driver_src"
TEXT = (0xFFFF_F800_0020_0000, 0xFFFF_F800_0024_0000)


def test_the_command_table_is_every_command_the_agent_registers() -> None:
    registered = {}
    for source in (DRIVER_SRC / "agent").glob("*.c"):
        for name, signature in re.findall(r'AGENT_COMMAND\("(\w+)",\s*"([ib]*)"', source.read_text()):
            registered[name] = signature
    assert registered == AGENT_COMMANDS


@pytest.mark.parametrize(("line", "expected"), [
    # the cases of the protocol page's own tests (tests/vm/test_agent_channel.py BAD_REQUESTS)
    (b"1 NoSuchDdi 0x1", (1, UNKNOWN_COMMAND)),
    (b"2 MmGetPhysicalAddress", (2, BAD_ARGUMENT)),
    (b"3 MmGetPhysicalAddress 0x1 0x2", (3, BAD_ARGUMENT)),
    (b"4 MmGetPhysicalAddress #00", (4, BAD_ARGUMENT)),
    (b"5 MmGetPhysicalAddress 0x10000000000000000", (5, MALFORMED)),
    (b"6 read_va 0xfffff80000000000 0", (6, BAD_ARGUMENT)),
    (b"7 read_va 0xfffff80000000000 4097", (7, BAD_ARGUMENT)),
    (b"hello", (None, MALFORMED)),
    (b"0 hello", (None, MALFORMED)),
    (b"8 hello \xff", (8, MALFORMED)),
    (b"", (None, MALFORMED)),
    # ids: 1 to 4294967295, decimal
    (b"4294967295 hello", (4294967295, OK)),
    (b"4294967296 hello", (None, MALFORMED)),
    (b"0x10 hello", (None, MALFORMED)),
    (b"-1 hello", (None, MALFORMED)),
    (b"0000000009 hello", (9, OK)),
    (b"9\xff hello", (None, MALFORMED)),
    # the order: malformed before unknown-command before bad-argument
    (b"9 NoSuch #abc", (9, MALFORMED)),
    (b"9 NoSuch true", (9, UNKNOWN_COMMAND)),
    (b"9 hello 0x1", (9, BAD_ARGUMENT)),
    (b"9 hello 0x1 \x07", (9, MALFORMED)),
    # values by spelling
    (b"9 MmGetPhysicalAddress 18446744073709551615", (9, OK)),
    (b"9 MmGetPhysicalAddress 18446744073709551616", (9, MALFORMED)),
    (b"9 MmGetPhysicalAddress 0x", (9, MALFORMED)),
    (b"9 MmGetPhysicalAddress 0X10", (9, MALFORMED)),
    (b"9 MmGetPhysicalAddress 0xFfFf", (9, OK)),
    (b"9 MmGetPhysicalAddress true", (9, BAD_ARGUMENT)),
    (b'9 MmGetPhysicalAddress "a b"', (9, BAD_ARGUMENT)),
    (b'9 MmGetPhysicalAddress "a\\x4"', (9, MALFORMED)),
    (b'9 MmGetPhysicalAddress "ab"c', (9, MALFORMED)),
    (b'9 MmGetPhysicalAddress "ab', (9, MALFORMED)),
    (b'9 "hello"', (9, UNKNOWN_COMMAND)),
    (b"9 write_va 0x1 #", (9, BAD_ARGUMENT)),
    # spacing: single spaces only
    (b"9  hello", (9, MALFORMED)),
    (b"9 hello ", (9, MALFORMED)),
    (b" 9 hello", (None, MALFORMED)),
    (b"9", (9, MALFORMED)),
    (b"9\thello", (None, MALFORMED)),
    # documented ranges
    (b"9 ExFreePoolWithTag 0x1 0x100000000", (9, BAD_ARGUMENT)),
    (b"9 ExFreePoolWithTag 0x1 0xffffffff", (9, OK)),
    (b"9 MmMapIoSpace 0xfee00000 0x1000 0x100000000", (9, BAD_ARGUMENT)),
    (b"9 READ_REGISTER_ULONG 0xfee00002", (9, BAD_ARGUMENT)),
    (b"9 test_hook_set_pte_no_flush 0x1000 0x0", (9, BAD_ARGUMENT)),
    (b"9 MmGetPhysicalAddress 0x1 0x1 0x1 0x1 0x1 0x1 0x1 0x1 0x1", (9, BAD_ARGUMENT)),
])
def test_each_request_gets_the_answer_the_protocol_page_gives_it(line: bytes, expected: tuple[int | None, str]) -> None:
    got = expect_request(line)
    assert (got.request_id, got.kind) == expected


def test_a_line_over_the_limit_is_oversized_and_one_at_the_limit_is_a_request() -> None:
    at_limit = b"9 MmGetPhysicalAddress " + b"0x1 " * ((LINE_MAX - 30) // 4) + b"1"
    at_limit += b"1" * (LINE_MAX - len(at_limit))  # a last value too long to parse: malformed
    assert len(at_limit) == LINE_MAX
    assert expect_request(at_limit).kind != OVERSIZED
    assert expect_com2(at_limit + b"\n")[0].kind != OVERSIZED
    assert expect_com2(at_limit + b"\r\n") == [Expected(None, OVERSIZED)], "the \\r counts before the newline"
    assert expect_mailbox(at_limit + b"1") == [Expected(None, OVERSIZED)]
    assert expect_mailbox(at_limit + b"\r") == [Expected(None, OVERSIZED)]
    assert expect_mailbox(b"5 ping\n" + at_limit + b"1\n6 ping") == \
        [Expected(5, OK, "ping"), Expected(None, OVERSIZED), Expected(6, OK, "ping")]


def test_com2_answers_every_line_and_ignores_a_carriage_return_before_the_newline() -> None:
    answers = expect_com2(b"5 hello\r\n\n6 hel\rlo\n")
    assert [(a.request_id, a.kind) for a in answers] == [(5, OK), (None, MALFORMED), (6, MALFORMED)]
    with pytest.raises(ValueError):
        expect_com2(b"5 hello")


def test_a_mailbox_request_is_a_batch_of_lines_each_answered_as_on_com2() -> None:
    def kinds(request: bytes) -> list[tuple[int | None, str]]:
        return [(a.request_id, a.kind) for a in expect_mailbox(request)]
    assert kinds(b"5 hello") == [(5, OK)]
    assert kinds(b"5 hello\r") == [(5, OK)], "a \\r before a line's end is ignored, as on COM2"
    assert kinds(b"5 hello\n") == [(5, OK)], "a final newline is optional"
    assert kinds(b"") == [(None, MALFORMED)], "an empty request is one empty line"
    assert kinds(b"\n") == [(None, MALFORMED)]
    assert kinds(b"5 hello\n\n") == [(5, OK), (None, MALFORMED)]
    assert kinds(b"5 ping\r\n6 nope\n7 hel\rlo") == [(5, OK), (6, UNKNOWN_COMMAND), (7, MALFORMED)]


def test_a_mailbox_request_past_the_request_area_is_one_oversized_answer() -> None:
    line = b"5 ping\n"
    full = (line * (MAILBOX_REQUEST_MAX // len(line) + 1))[:MAILBOX_REQUEST_MAX]
    assert len(expect_mailbox(full)) == MAILBOX_REQUEST_MAX // len(line) + 1
    assert expect_mailbox(full + b"\n") == [Expected(None, OVERSIZED)]


def test_a_doorbell_at_the_start_of_a_com2_line_is_dropped_and_elsewhere_is_an_ordinary_byte() -> None:
    ring = DOORBELL_REQUEST
    assert expect_com2(b"5 hel" + ring + b"lo\n") == [Expected(5, MALFORMED)]
    assert expect_com2(ring + b"5 hello\n") == [Expected(5, OK, "hello")]
    assert expect_com2(ring * 3 + b"5 hello\n" + ring + b"6 ping\n") == \
        [Expected(5, OK, "hello"), Expected(6, OK, "ping")]
    assert expect_com2(ring + b"\n") == [Expected(None, MALFORMED)], "what is left is an empty line"
    assert expect_com2(b"\x065 hello\n") == [Expected(None, MALFORMED)], "0x06 is never a host's doorbell"
    assert expect_com2(b" " + ring + b"5 hello\n") == [Expected(None, MALFORMED)]
    assert expect_mailbox(ring + b"5 hello") == [Expected(None, MALFORMED)], "the mailbox has no doorbells"


def test_values_and_tokens_follow_the_grammar() -> None:
    assert parse_value("0x" + "f" * 16) == (1 << 64) - 1
    assert parse_value("0x" + "f" * 17) is None
    assert parse_value("2" * 20) is None  # above 2^64 - 1
    assert parse_value("1" * 20) == int("1" * 20)
    assert parse_value("#") == b""
    assert parse_value('"\\x41"') == '"\\x41"'
    assert parse_value('"\\x+1"') is None
    assert split_tokens('a "b c" d') == ["a", '"b c"', "d"]
    assert split_tokens("a  b") is None
    assert split_tokens('a "b') is None


def test_a_case_is_a_function_of_its_seed_and_index() -> None:
    one = FrameGenerator(5, text=TEXT, mailbox=True)
    other = FrameGenerator(5, text=TEXT, mailbox=True)
    assert [one.case(i) for i in range(300)] == [other.case(i) for i in reversed(range(300))][::-1]
    assert [c.sends for c in (one.case(i) for i in range(50))] != \
        [c.sends for c in (FrameGenerator(6, text=TEXT, mailbox=True).case(i) for i in range(50))]


def test_generated_cases_never_run_a_command_with_side_effects() -> None:
    generator = FrameGenerator(11, text=TEXT, mailbox=True)
    ran = set()
    kinds = set()
    for i in range(20_000):
        case = generator.case(i)
        for answer in case.expected:
            kinds.add(answer.kind)
            assert answer.request_id not in RESERVED_IDS
            if answer.kind == OK:
                assert answer.command in HARMLESS_COMMANDS, case
                ran.add(answer.command)
                if answer.command == "read_va":
                    va, length = answer.values
                    assert TEXT[0] <= va and va + length <= TEXT[1]
    assert kinds == {OK, MALFORMED, OVERSIZED, UNKNOWN_COMMAND, BAD_ARGUMENT}
    assert ran == set(HARMLESS_COMMANDS)


def test_without_a_mailbox_every_case_goes_to_com2_and_ends_its_line() -> None:
    generator = FrameGenerator(3, text=TEXT, mailbox=False)
    for i in range(500):
        case = generator.case(i)
        assert {s.channel for s in case.sends} == {COM2}
        assert all(s.data.endswith(b"\n") for s in case.sends)
        assert case.answer_channels() == [COM2] * len(case.expected)


def test_doorbell_cases_ring_late_and_the_next_com2_line_keeps_its_id() -> None:
    generator = FrameGenerator(2, text=TEXT, mailbox=True)
    cases = [c for c in (generator.case(i) for i in range(3000)) if c.label == "doorbell"]
    two_channel = [c for c in cases if [s.channel for s in c.sends] == [MAILBOX, COM2]]
    assert two_channel, "some doorbell cases post, ring late and send a line"
    for case in two_channel:
        assert case.sends[1].data.startswith(DOORBELL_REQUEST)
        assert [a.kind for a in case.expected] == [OK, OK]
        assert case.answer_channels() == [MAILBOX, COM2]
    assert any(c.sends[0].channel == MAILBOX and c.sends[0].data.startswith(DOORBELL_REQUEST) and
               c.expected[0] == Expected(None, MALFORMED) for c in cases), "rings inside a mailbox batch"


def test_batches_fill_the_request_area_exactly_or_pass_it_and_their_answers_fit_the_mailbox() -> None:
    generator = FrameGenerator(4, text=TEXT, mailbox=True)
    cases = [generator.case(i) for i in range(6000)]
    full = [c for c in cases if c.label == "full batch"]
    past = [c for c in cases if c.label == "batch past the request area"]
    batches = [c for c in cases if c.label == "batch"]
    assert full and past and batches
    assert all(len(c.sends[0].data) == MAILBOX_REQUEST_MAX and len(c.expected) > 1000 for c in full)
    assert all(len(c.sends[0].data) > MAILBOX_REQUEST_MAX and c.expected == (Expected(None, OVERSIZED),)
               for c in past)
    assert any(len(c.expected) > 1 and c.mailbox_lines() == len(c.expected) for c in batches)
    for case in cases:
        for send, answers in zip(case.sends, case.answers, strict=True):
            if send.channel == MAILBOX:
                assert sum(map(answer_bound, answers)) <= MAILBOX_ANSWER_BUDGET
