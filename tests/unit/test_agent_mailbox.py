"""The host's view of the agent mailbox, on a RAM file laid out by hand (no VM)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agent.codec import PROTOCOL_VERSION
from harness.agent.mailbox import HEADER_BYTES, MAGIC, REQUEST_AREA, RESPONSE_OFFSET, Mailbox
from harness.errors import ProtocolError
from harness.oracle.memory import RamLayout

MiB = 1 << 20
VERSION = PROTOCOL_VERSION
MAILBOX_PA = 0x10_0000 + 0x4000  # in the second region, which starts at file offset 1 MiB
LAYOUT = RamLayout([(0, 1 * MiB, 0), (1 * MiB, 1 * MiB, 1 * MiB)])
RESPONSE_CAPACITY = 0x40000


@pytest.fixture
def ram(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "guest.ram", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, LAYOUT.file_size)
    yield fd
    os.close(fd)


def write_header(fd: int, *, magic: int = MAGIC, version: int = VERSION, request_capacity: int = REQUEST_AREA,
                 response_capacity: int = RESPONSE_CAPACITY, at: int = MAILBOX_PA) -> None:
    header = struct.pack("<11I", magic, version, request_capacity, response_capacity, 0, 0, 0, 0, 0, 0, 0)
    os.pwrite(fd, header, LAYOUT.file_offset(at))


def guest_answers(fd: int, sequence: int, frame: bytes) -> None:
    base = LAYOUT.file_offset(MAILBOX_PA)
    os.pwrite(fd, frame, base + RESPONSE_OFFSET)
    os.pwrite(fd, struct.pack("<2I", sequence, len(frame)), base + 28)


def test_a_posted_request_lands_where_the_agent_reads_it(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    mailbox.response_limit = 200
    sequence = mailbox.post(b"1 hello")
    base = LAYOUT.file_offset(MAILBOX_PA)
    assert struct.unpack("<3I", os.pread(ram, 12, base + 16)) == (sequence, 7, 200)
    assert os.pread(ram, 7, base + HEADER_BYTES) == b"1 hello"
    assert mailbox.take(sequence) is None, "nothing answered yet"
    guest_answers(ram, sequence, b"=1 ok proto=3\n")
    assert mailbox.take(sequence) == b"=1 ok proto=3\n"
    assert mailbox.post(b"2 hello") == sequence + 1
    mailbox.close()


def test_a_batch_is_posted_whole_and_its_answers_taken_together(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    batch = b"1 ping\n2 MmGetPhysicalAddress 0x1000\n3 ping"
    sequence = mailbox.post(batch)
    assert os.pread(ram, len(batch), LAYOUT.file_offset(MAILBOX_PA) + HEADER_BYTES) == batch
    assert not mailbox.answered(sequence)
    guest_answers(ram, sequence, b"=1 ok\n=2 ok pa=0x0\n=3 ok\n")
    assert mailbox.answered(sequence)
    assert mailbox.take(sequence) == b"=1 ok\n=2 ok pa=0x0\n=3 ok\n"
    mailbox.close()


def test_an_oversized_request_is_posted_with_its_true_length(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    mailbox.post(b"1" * (REQUEST_AREA + 5000))
    assert struct.unpack("<I", os.pread(ram, 4, LAYOUT.file_offset(MAILBOX_PA) + 20)) == (REQUEST_AREA + 5000,)
    mailbox.close()


def test_the_states_that_ask_for_a_doorbell_are_read_and_written_where_the_agent_keeps_them(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    base = LAYOUT.file_offset(MAILBOX_PA)
    assert not mailbox.agent_halted
    os.pwrite(ram, struct.pack("<I", 1), base + 0x24)
    assert mailbox.agent_halted
    mailbox.set_host_waiting(True)
    assert struct.unpack("<I", os.pread(ram, 4, base + 0x28)) == (1,)
    mailbox.set_host_waiting(False)
    assert struct.unpack("<I", os.pread(ram, 4, base + 0x28)) == (0,)
    mailbox.close()


def test_a_response_longer_than_the_mailbox_is_a_protocol_error(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    sequence = mailbox.post(b"1 hello")
    base = LAYOUT.file_offset(MAILBOX_PA)
    os.pwrite(ram, struct.pack("<2I", sequence, RESPONSE_CAPACITY + 1), base + 28)
    with pytest.raises(ProtocolError, match=f"claims {RESPONSE_CAPACITY + 1} bytes"):
        mailbox.take(sequence)
    mailbox.close()


@pytest.mark.parametrize(("header", "message"), [
    ({"magic": 0x1234}, f"found magic 0x1234 version {VERSION}"),
    ({"version": VERSION - 1}, f"expected 0x58424d4d version {VERSION}"),
    ({"request_capacity": REQUEST_AREA + 1}, f"capacities {REQUEST_AREA + 1}/{RESPONSE_CAPACITY}"),
    ({"response_capacity": 0}, f"capacities {REQUEST_AREA}/0"),
])
def test_a_wrong_header_is_named(ram: int, header: dict[str, int], message: str) -> None:
    write_header(ram, **header)
    with pytest.raises(ProtocolError, match=message):
        Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)


def test_a_mailbox_outside_ram_or_off_a_page_is_refused(ram: int) -> None:
    with pytest.raises(ProtocolError, match=r"\[0x300000, \+0x1000\) is not in RAM"):
        Mailbox(ram, LAYOUT, 0x30_0000, VERSION)
    with pytest.raises(ProtocolError, match="not page aligned"):
        Mailbox(ram, LAYOUT, MAILBOX_PA + 8, VERSION)


def test_a_mailbox_whose_areas_run_past_its_ram_region_is_refused(ram: int) -> None:
    near_end = 2 * MiB - HEADER_BYTES
    write_header(ram, at=near_end)
    with pytest.raises(ProtocolError, match="is not in RAM"):
        Mailbox(ram, LAYOUT, near_end, VERSION)


def test_the_hello_is_taken_from_the_response_area_only_as_one_whole_frame(ram: int) -> None:
    write_header(ram)
    mailbox = Mailbox(ram, LAYOUT, MAILBOX_PA, VERSION)
    hello = b'!hello proto=3 build="0123456789abcdef" paging=4\n'
    guest_answers(ram, 0, hello)
    assert mailbox.take_hello() == hello
    for bad in (hello[:-1], hello + b"=1 ok\n", b""):
        guest_answers(ram, 0, bad)
        with pytest.raises(ProtocolError, match="no single frame as its hello"):
            mailbox.take_hello()
    os.pwrite(ram, struct.pack("<I", RESPONSE_CAPACITY + 1), LAYOUT.file_offset(MAILBOX_PA) + 32)
    with pytest.raises(ProtocolError, match=f"{RESPONSE_CAPACITY + 1} bytes"):
        mailbox.take_hello()
    mailbox.close()
