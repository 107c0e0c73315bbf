"""Building the guest kernel and its firmware, once per machine even under pytest-xdist (a file lock
serialises make)."""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.config import VmConfig
from harness.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "driver_src"
BUILD_DIR = REPO_ROOT / "vm_images" / "build"
KERNEL = BUILD_DIR / "mmhil-kernel.elf"  # with symbols and debug info: what gdb reads
BOOT_IMAGE = BUILD_DIR / "mmhil-kernel.boot.elf"  # the same, stripped: what QEMU boots (driver_src/Makefile)
BUILD_ID = BUILD_DIR / "mmhil-kernel.build-id"
FIRMWARE = BUILD_DIR / "mmhil-firmware.bin"
BUILD_OUTPUTS = (KERNEL, BOOT_IMAGE, BUILD_ID, FIRMWARE)  # what `mmhil bench boot --against` needs of a tree
ROM_BYTES = 64 * 1024


MAILBOX_NOTE = (b"mmhil", 1)  # owner and type of the note that holds the mailbox's physical address
PVH_ENTRY_NOTE = (b"Xen", 18)  # XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry's physical address, 32 bits
_PT_NOTE = 4


@dataclass(frozen=True)
class KernelImage:
    path: Path  # what QEMU's -kernel loads: stripped, which starts a VM sooner
    build_id: str
    mailbox_address: int  # physical: where the agent's hello waits when the host asks for it there
    entry_address: int  # physical: the PVH entry, where the firmware hands over
    firmware: Path  # the ROM built with it (driver_src/firmware), for configs with firmware = "mmhil"
    symbols: Path  # the same link with its symbols and debug info, for gdb and cores

    def firmware_for(self, config: VmConfig) -> Path | None:
        """The ROM QEMU loads as -bios for `config` from this build; None where the config's firmware is not ours."""
        return self.firmware if config.firmware == "mmhil" else None


def build_kernel(timeout: float = 600.0) -> KernelImage:
    """Run `make -C driver_src` (a no-op when the image is current) and return the image."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(BUILD_DIR / ".build.lock"), timeout=timeout):
            result = subprocess.run(
                ["make", "-C", str(SOURCE_DIR), "-j2", "--no-print-directory"],
                capture_output=True, text=True, timeout=timeout,
            )
    except Timeout as exc:
        raise BuildError(f"waited {timeout:g} s for another build of the guest kernel to finish") from exc
    except FileNotFoundError as exc:
        raise BuildError("make is not installed: run the README's set-up command") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"building the guest kernel took longer than {timeout:g} s") from exc
    if result.returncode != 0:
        raise BuildError(f"guest kernel build failed (make exit {result.returncode}):\n"
                         f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return current_kernel()


def current_kernel(build_dir: Path = BUILD_DIR) -> KernelImage:
    """The image `make -C driver_src` left in `build_dir`: this tree's, or another tree's copied aside
    (`mmhil bench boot --against`)."""
    kernel, boot_image, build_id, firmware = (build_dir / path.name for path in BUILD_OUTPUTS)
    for path in (kernel, boot_image, build_id):
        if not path.is_file():
            raise BuildError(f"no guest kernel build at {path}: run `mmhil build`")
    mailbox = elf_note(boot_image, *MAILBOX_NOTE)
    if len(mailbox) != 8:
        raise BuildError(f"{boot_image} has no mailbox note ({MAILBOX_NOTE[0].decode()}, type {MAILBOX_NOTE[1]}): "
                         "rebuild it with `mmhil build`")
    entry = elf_note(boot_image, *PVH_ENTRY_NOTE)
    if len(entry) != 4:
        raise BuildError(f"{boot_image} has no PVH entry note (Xen, type 18): QEMU could not boot it")
    if not firmware.is_file() or firmware.stat().st_size != ROM_BYTES:
        raise BuildError(f"no {ROM_BYTES // 1024} KiB firmware ROM at {firmware}: rebuild with `mmhil build`")
    return KernelImage(boot_image, build_id.read_text(encoding="ascii").strip(), int.from_bytes(mailbox, "little"),
                       int.from_bytes(entry, "little"), firmware, kernel)


def elf_note(path: Path, owner: bytes, note_type: int) -> bytes:
    """The descriptor of the first note from `owner` of `note_type` in an ELF64's PT_NOTE segments,
    or b"" if there is none."""
    image = path.read_bytes()
    if image[:5] != b"\x7fELF\x02":
        raise BuildError(f"{path} is not an ELF64 image")
    try:
        return _find_note(image, owner, note_type)
    except struct.error as exc:
        raise BuildError(f"{path} is cut short: its program headers or notes run past its end") from exc


def _find_note(image: bytes, owner: bytes, note_type: int) -> bytes:
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    for index in range(phnum):
        p_type, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", image, phoff + index * phentsize)
        if p_type != _PT_NOTE:
            continue
        position, end = offset, min(offset + size, len(image))
        while position + 12 <= end:
            name_size, descriptor_size, kind = struct.unpack_from("<III", image, position)
            name_at = position + 12
            descriptor_at = name_at + (name_size + 3) // 4 * 4
            if image[name_at : name_at + name_size].rstrip(b"\0") == owner and kind == note_type:
                return image[descriptor_at : descriptor_at + descriptor_size]
            position = descriptor_at + (descriptor_size + 3) // 4 * 4
    return b""
