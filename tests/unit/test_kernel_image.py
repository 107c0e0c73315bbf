"""The kernel image's notes: the host finds the agent's mailbox before the hello through one."""

import re
import struct
from pathlib import Path

import pytest

from harness.build import MAILBOX_NOTE, ROM_BYTES, current_kernel, elf_note
from harness.errors import BuildError


def note(owner: bytes, kind: int, descriptor: bytes) -> bytes:
    name = owner + b"\0"
    return (struct.pack("<III", len(name), len(descriptor), kind) + name.ljust((len(name) + 3) // 4 * 4, b"\0")
            + descriptor.ljust((len(descriptor) + 3) // 4 * 4, b"\0"))


def elf64(*segments: tuple[int, bytes]) -> bytes:
    """An ELF64 header, program headers of (p_type, contents), then the contents."""
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)
    struct.pack_into("<HH", header, 0x36, 56, len(segments))
    offset = 64 + 56 * len(segments)
    table, contents = b"", b""
    for p_type, data in segments:
        table += struct.pack("<IIQQQQQQ", p_type, 4, offset + len(contents), 0, 0, len(data), len(data), 4)
        contents += data
    return bytes(header) + table + contents


def write(tmp_path: Path, image: bytes) -> Path:
    path = tmp_path / "kernel.elf"
    path.write_bytes(image)
    return path


def test_the_mailbox_note_is_found_behind_another_note_and_another_segment(tmp_path: Path) -> None:
    address = (0x251000).to_bytes(8, "little")
    image = elf64((1, b"\x90" * 16),
                  (4, note(b"Xen", 18, b"\0\0\x20\0") + note(b"mmhil", 2, b"other") + note(*MAILBOX_NOTE, address)))
    assert elf_note(write(tmp_path, image), *MAILBOX_NOTE) == address


def test_an_image_without_the_note_gives_nothing(tmp_path: Path) -> None:
    image = elf64((4, note(b"Xen", 18, b"\0\0\x20\0") + note(b"mmhi", 1, b"12345678")))
    assert elf_note(write(tmp_path, image), *MAILBOX_NOTE) == b""


def test_a_file_that_is_not_elf64_or_is_cut_short_is_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not an ELF64 image"):
        elf_note(write(tmp_path, b"\x7fELF\x01" + bytes(60)), *MAILBOX_NOTE)
    whole = elf64((4, note(*MAILBOX_NOTE, bytes(8))))
    with pytest.raises(BuildError, match="cut short"):
        elf_note(write(tmp_path, whole[:70]), *MAILBOX_NOTE)


def test_a_build_directory_of_another_tree_gives_its_own_image(tmp_path: Path) -> None:
    build = tmp_path / "other-build"
    build.mkdir()
    address = (0x251000).to_bytes(8, "little")
    (build / "mmhil-kernel.boot.elf").write_bytes(
        elf64((4, note(b"Xen", 18, (0x200040).to_bytes(4, "little")) + note(*MAILBOX_NOTE, address))))
    (build / "mmhil-kernel.elf").write_bytes(b"symbols")
    (build / "mmhil-kernel.build-id").write_text("0123456789abcdef\n", encoding="ascii")
    (build / "mmhil-firmware.bin").write_bytes(bytes(ROM_BYTES))
    image = current_kernel(build)
    assert (image.path, image.symbols, image.firmware) == (
        build / "mmhil-kernel.boot.elf", build / "mmhil-kernel.elf", build / "mmhil-firmware.bin")
    assert (image.build_id, image.mailbox_address, image.entry_address) == ("0123456789abcdef", 0x251000, 0x200040)
    (build / "mmhil-firmware.bin").write_bytes(bytes(1024))
    with pytest.raises(BuildError, match=f"no 64 KiB firmware ROM at {re.escape(str(build))}"):
        current_kernel(build)


def test_a_directory_without_a_build_is_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=f"no guest kernel build at {re.escape(str(tmp_path))}/mmhil-kernel.elf"):
        current_kernel(tmp_path)
