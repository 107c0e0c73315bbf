"""The console's bad patterns, on a pipe (no QEMU): the boot banner is allowed once, a second one ends the wait."""

import os
from pathlib import Path

import pytest

from harness.console import BOOT_COMPLETE, Console, ConsoleBadPattern

BANNER = b"mmhil: build 0123456789abcdef, 4-level paging, 256 MiB of RAM; agent ready\n"


def console_reading(data: bytes, tmp_path: Path) -> Console:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    console = Console(read_fd, tmp_path / "console.log")
    console.forbid("unexpected reboot", BOOT_COMPLETE, allowed=1)
    return console


def test_the_first_banner_is_passed_over_by_a_wait_that_never_saw_it(tmp_path: Path) -> None:
    console = console_reading(BANNER + b"report: done\n", tmp_path)
    try:
        assert console.expect(r"report: (\w+)", 2.0).groups == ("done",)
    finally:
        console.close()


def test_a_second_banner_ends_the_wait_as_a_reboot(tmp_path: Path) -> None:
    console = console_reading(BANNER + b"mmhil: build x\n" + BANNER + b"report: done\n", tmp_path)
    try:
        with pytest.raises(ConsoleBadPattern) as caught:
            console.expect("report: done", 2.0)
        assert caught.value.name == "unexpected reboot"
    finally:
        console.close()
