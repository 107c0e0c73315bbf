"""The agent survives anything on its channel: every bad frame gets an error and it keeps serving."""

import random

from harness.agent.codec import MAX_REQUEST_BYTES, Response
from harness.vm import Vm

SYNC_ID = 4_000_000_000


def read_until_answer(vm: Vm, request_id: int) -> list[Response]:
    """Every response up to and including the one for `request_id`."""
    seen: list[Response] = []
    while True:
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response), f"unexpected notice {frame}"
        seen.append(frame)
        if frame.request_id == request_id:
            return seen


def test_each_kind_of_bad_request_gets_its_error_kind(vm: Vm) -> None:
    cases = {
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
    for line, (request_id, kind) in cases.items():
        vm.agent.send_raw(line)
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response) and not frame.ok, f"{line[:40]!r} was answered {frame}"
        assert (frame.request_id, frame.error_kind) == (request_id, kind), f"{line[:40]!r}: {frame}"
    assert vm.request("hello")["proto"] == 1


def test_agent_answers_correctly_after_a_thousand_malformed_frames(vm: Vm) -> None:
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
    for start in range(0, len(frames), 50):
        vm.agent.send_raw(b"".join(frames[start : start + 50]), vm.timeout)
    vm.agent.send_raw(f"{SYNC_ID} hello\n".encode())
    responses = read_until_answer(vm, SYNC_ID)
    assert len(responses) == len(frames) + 1, "every frame gets exactly one response"
    assert all(not r.ok for r in responses[:-1]), [r for r in responses[:-1] if r.ok][:3]
    assert responses[-1].ok and responses[-1].values["proto"] == 1

    info = vm.mm.kernel_info()
    assert vm.mm.MmGetPhysicalAddress(info.text_start) == vm.qemu.gva2gpa(info.text_start)
