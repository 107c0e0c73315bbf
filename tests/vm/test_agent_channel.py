"""The agent's two channels, COM2 and the mailbox in guest RAM: both carry the same frames, and the
agent survives anything on either: every bad frame gets an error and it keeps serving."""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from harness.agent.client import agent_quiet_microseconds
from harness.agent.codec import MAX_REQUEST_BYTES, PROTOCOL_VERSION, Response, decode_frame, encode_request
from harness.agent.mailbox import RESPONSE_OFFSET, Mailbox
from harness.build import KernelImage
from harness.config import load_configs
from harness.vm import Vm

SYNC_ID = 4_000_000_000
AGENT_QUIET_TICKS = 1 << 21  # driver_src/agent/agent.c: QUIET_TICKS
TSC_ASSUMED_TICKS_PER_MICROSECOND = 2600  # driver_src/include/smp.h: TSC_ASSUMED_HZ


def read_until_answer(vm: Vm, request_id: int) -> list[Response]:
    """Every response up to and including the one for `request_id`."""
    seen: list[Response] = []
    while True:
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response), f"unexpected notice {frame}"
        seen.append(frame)
        if frame.request_id == request_id:
            return seen


def mailbox_or_skip(vm: Vm) -> Mailbox:
    if vm.agent.mailbox is None:
        pytest.skip(f"{vm.name} has no mailbox: its RAM is not shared with the host")
    return vm.agent.mailbox


@contextmanager
def com2_only(vm: Vm) -> Iterator[None]:
    vm.agent.use_mailbox = False
    try:
        yield
    finally:
        vm.agent.use_mailbox = True


BAD_REQUESTS = {
        b"1 NoSuchDdi 0x1\n": (1, "unknown-command"),
        b"2 MmGetPhysicalAddress\n": (2, "bad-argument"),
        b"3 MmGetPhysicalAddress 0x1 0x2\n": (3, "bad-argument"),
        b"4 MmGetPhysicalAddress #00\n": (4, "bad-argument"),
        b"5 MmGetPhysicalAddress 0x10000000000000000\n": (5, "malformed"),
        b"6 read_va 0xfffff80000000000 0\n": (6, "bad-argument"),
        b"7 read_va 0xfffff80000000000 4097\n": (7, "bad-argument"),
        b"hello\n": (None, "malformed"),
        b"0 hello\n": (None, "malformed"),
        b"8 hello \xff\n": (8, "malformed"),
        b"\n": (None, "malformed"),
        b"9" + b"1" * (MAX_REQUEST_BYTES + 10) + b"\n": (None, "oversized"),
}


def test_each_kind_of_bad_request_gets_its_error_kind(vm: Vm) -> None:
    for line, (request_id, kind) in BAD_REQUESTS.items():
        vm.agent.send_raw(line)
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response) and not frame.ok, f"{line[:40]!r} was answered {frame}"
        assert (frame.request_id, frame.error_kind) == (request_id, kind), f"{line[:40]!r}: {frame}"
    assert vm.request("hello")["proto"] == PROTOCOL_VERSION


def test_bad_requests_in_the_mailbox_get_the_errors_they_get_on_com2(vm: Vm) -> None:
    mailbox_or_skip(vm)
    for line, (request_id, kind) in BAD_REQUESTS.items():
        vm.agent.post_raw(line[:-1], request_id)
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response) and not frame.ok, f"{line[:40]!r} was answered {frame}"
        assert (frame.request_id, frame.error_kind) == (request_id, kind), f"{line[:40]!r}: {frame}"
    assert vm.agent.mailbox_ready, "every mailbox request was answered"
    assert vm.request("hello")["proto"] == PROTOCOL_VERSION


def test_the_doorbell_byte_in_a_com2_line_is_an_ordinary_byte_when_the_mailbox_is_empty(vm: Vm) -> None:
    vm.agent.send_raw(b"5 hel\x07lo\n")
    frame = vm.agent.read_frame(vm.timeout)
    assert isinstance(frame, Response) and (frame.request_id, frame.error_kind) == (5, "malformed"), frame
    assert vm.request("hello")["proto"] == PROTOCOL_VERSION


def test_the_answer_is_in_guest_ram_at_the_mailbox_as_qemu_reads_it(vm: Vm) -> None:
    mailbox = mailbox_or_skip(vm)
    info = vm.mm.kernel_info()
    request_id = 77
    vm.agent.post_raw(encode_request(request_id, "MmGetPhysicalAddress", info.text_start)[:-1], request_id)
    frame = vm.agent.read_frame(vm.timeout)
    assert isinstance(frame, Response) and frame.request_id == request_id and frame.ok, frame
    # QEMU's own view of the response area, read through the monitor rather than the host's mapping.
    in_ram = vm.verify.monitor_memory.read(mailbox.physical_address + RESPONSE_OFFSET, 4096)
    assert decode_frame(in_ram[: in_ram.index(b"\n")]) == frame
    assert frame.values["pa"] == vm.qemu.gva2gpa(info.text_start)


def test_where_the_host_maps_guest_ram_the_hello_comes_through_the_mailbox_the_image_names(vm: Vm) -> None:
    mailbox_or_skip(vm)
    assert vm.hello_channel == "the mailbox"
    assert "hello=mailbox" in str(vm.hello["cmdline"]).split()
    assert vm.hello["mailbox"] == vm.kernel.mailbox_address
    first = vm.agent.transcript_path.read_text().splitlines()[0]
    assert first.split(" ", 1)[1].startswith("< [mailbox] !hello proto="), first
    # QEMU's own view of that address, read through the monitor: the mailbox's magic.
    assert vm.verify.monitor_memory.read(vm.kernel.mailbox_address, 4) == b"MMBX"


def test_without_shared_ram_the_hello_comes_on_com2_and_the_host_asks_for_no_mailbox(
    mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    with Vm(load_configs()["default"], kernel=mmhil_kernel, accelerator="tcg", artifacts=tmp_path,
            shared_ram=False) as vm:
        assert vm.hello_channel == "COM2" and vm.agent.mailbox is None
        assert "hello=" not in str(vm.hello["cmdline"])
        assert vm.request("hello")["mailbox"] == mmhil_kernel.mailbox_address


def test_an_unknown_hello_channel_is_named_on_the_console_and_the_hello_comes_on_com2(
    mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    config = replace(load_configs()["default"], name="hello-loud", kernel_cmdline="hello=loud")
    with Vm(config, kernel=mmhil_kernel, accelerator="tcg", artifacts=tmp_path) as vm:
        assert vm.hello_channel == "COM2"
        assert "mmhil: hello=loud is not mailbox or com2: saying hello on COM2" in vm.machine.console_log.read_text()
        assert vm.agent.mailbox is not None, "the host still maps guest RAM: requests use the mailbox"
        assert vm.request("hello")["proto"] == PROTOCOL_VERSION
        assert vm.agent.transcript_path.read_text().count("< [mailbox] =") == 1


def test_com2_and_the_mailbox_give_the_same_answers(vm: Vm) -> None:
    mailbox_or_skip(vm)
    info = vm.mm.kernel_info()
    requests = [("hello",), ("MmGetPhysicalAddress", info.text_start), ("MmGetPhysicalAddress", info.stack_base),
                ("read_va", info.rodata_start, 4096), ("MmGetPhysicalAddress", 0x1000)]
    through_mailbox = [vm.request(*r) for r in requests]
    with com2_only(vm):
        through_com2 = [vm.request(*r) for r in requests]
    assert through_mailbox == through_com2


def test_the_agent_halts_sooner_when_the_host_asks_but_never_later_than_its_own(vm: Vm) -> None:
    mailbox = mailbox_or_skip(vm)
    try:
        for asked, ticks in [(0, AGENT_QUIET_TICKS), (50, 50 * TSC_ASSUMED_TICKS_PER_MICROSECOND),
                             (1, TSC_ASSUMED_TICKS_PER_MICROSECOND), (10**6, AGENT_QUIET_TICKS),
                             (0xFFFF_FFFF, AGENT_QUIET_TICKS)]:
            mailbox.ask_agent_quiet(asked)
            assert vm.mm.quiet_ticks() == ticks, f"asked for {asked} us"
        mailbox.ask_agent_quiet(1)
        assert [vm.request("ping") for _ in range(20)] == [{}] * 20, "an agent halting at once is woken each time"
        with pytest.raises(ValueError, match="does not fit"):
            mailbox.ask_agent_quiet(1 << 32)
    finally:
        mailbox.ask_agent_quiet(agent_quiet_microseconds())


def test_an_answer_too_big_for_the_mailbox_arrives_whole_on_com2(vm: Vm) -> None:
    mailbox = mailbox_or_skip(vm)
    info = vm.mm.kernel_info()
    mailbox.response_limit = 100
    try:
        data = vm.request("read_va", info.rodata_start, 4096)["data"]
    finally:
        mailbox.response_limit = mailbox.response_capacity
    transcript = vm.agent.transcript_path.read_text(encoding="utf-8").splitlines()
    assert any(" < =" in line and "data=#" in line for line in transcript[-3:]), "the answer came on COM2"
    assert data == vm.verify.memory.read(vm.qemu.gva2gpa(info.rodata_start), 4096)
    assert vm.agent.mailbox_ready, "the spilled answer settled the mailbox request"
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)


def thousand_malformed_frames() -> list[bytes]:
    rng = random.Random(0x4D4D48)
    frames: list[bytes] = []
    for i in range(1000):
        kind = i % 10
        if i % 500 == 0:  # two oversized frames: 16 KiB each through the UART
            frames.append(b"7 NoSuchCommand " + b"ab" * (MAX_REQUEST_BYTES // 2) + b"\n")
        elif kind < 7:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))).replace(b"\n", b"") + b"\n")
        elif kind == 7:
            frames.append(f"{rng.randrange(1, 1 << 32)} Frobnicate{i} 0x{rng.getrandbits(64):x}\n".encode())
        elif kind == 8:
            frames.append(f"{rng.randrange(1, 1 << 32)} MmGetPhysicalAddress 0x{'f' * 17}\n".encode())
        else:
            frames.append(f"{rng.randrange(1, 1 << 32)} ExFreePoolWithTag\n".encode())
    return frames


def test_agent_answers_correctly_after_a_thousand_malformed_frames_on_com2(vm: Vm) -> None:
    frames = thousand_malformed_frames()
    for start in range(0, len(frames), 50):
        vm.agent.send_raw(b"".join(frames[start : start + 50]), vm.timeout)
    vm.agent.send_raw(f"{SYNC_ID} hello\n".encode())
    responses = read_until_answer(vm, SYNC_ID)
    assert len(responses) == len(frames) + 1, "every frame gets exactly one response"
    assert all(not r.ok for r in responses[:-1]), [r for r in responses[:-1] if r.ok][:3]
    assert responses[-1].ok and responses[-1].values["proto"] == PROTOCOL_VERSION

    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)


def test_agent_answers_correctly_after_a_thousand_malformed_frames_in_the_mailbox(vm: Vm) -> None:
    mailbox_or_skip(vm)
    for line in thousand_malformed_frames():
        vm.agent.post_raw(line[:-1])
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response) and not frame.ok, f"{line[:40]!r} was answered {frame}"
    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)
