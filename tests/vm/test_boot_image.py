"""The image QEMU boots, and a kernel starting on RAM an earlier boot left dirty.

QEMU's -kernel loads `mmhil-kernel.boot.elf`, the stripped copy of `mmhil-kernel.elf` (which gdb
reads). Neither puts the bss in a loadable segment (kernel.ld), so no loader writes it: fresh guest
RAM is zero, and boot/pvh.S clears the bss only when an earlier boot on the same RAM left its mark.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.agent.codec import PROTOCOL_VERSION, Notice, decode_frame
from harness.agent.mailbox import Mailbox
from harness.build import KernelImage
from harness.errors import ProtocolError
from harness.verify import ram_layout
from harness.vm import Vm

PT_LOAD = 1
KERNEL_VIRT_OFFSET = 0xFFFFF80000000000  # include/layout.h
PAGE = 4096


def loaded_segments(path: Path) -> list[tuple[int, int, int, bytes]]:
    """(physical address, file size, memory size, file bytes) of each PT_LOAD of an ELF64."""
    image = path.read_bytes()
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    segments = []
    for index in range(phnum):
        p_type, _, offset, _, paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", image, phoff + index * phentsize)
        if p_type == PT_LOAD:
            segments.append((paddr, filesz, memsz, image[offset : offset + filesz]))
    return segments


def symbol(kernel: KernelImage, name: str) -> int:
    listing = subprocess.run(["nm", str(kernel.symbols)], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        address, _, symbol_name = line.split()
        if symbol_name == name:
            return int(address, 16)
    raise AssertionError(f"{kernel.symbols} has no symbol {name}")


def test_the_boot_image_is_the_symbols_file_stripped_and_loads_no_bss(mmhil_kernel: KernelImage) -> None:
    assert mmhil_kernel.path != mmhil_kernel.symbols
    boot, full = loaded_segments(mmhil_kernel.path), loaded_segments(mmhil_kernel.symbols)
    assert boot == full, "both files load the same bytes at the same addresses"
    assert mmhil_kernel.path.stat().st_size < mmhil_kernel.symbols.stat().st_size / 2, "symbols and DWARF are gone"
    bss_start = symbol(mmhil_kernel, "__bss_start") - KERNEL_VIRT_OFFSET
    bss_end = symbol(mmhil_kernel, "__bss_end") - KERNEL_VIRT_OFFSET
    assert bss_start < bss_end
    for paddr, filesz, memsz, _ in boot:
        assert memsz == filesz, f"the segment at {paddr:#x} asks the loader to zero {memsz - filesz:#x} bytes"
        assert paddr + memsz <= bss_start or paddr >= bss_end, f"the segment at {paddr:#x} reaches into the bss"


def wait_for_hello(vm: Vm, timeout: float) -> Notice:
    """The hello of the kernel's next boot, read from its mailbox as soon as the magic is back."""
    fd = vm.machine.shared_ram_fd
    assert fd is not None, "this test reads the mailbox through the shared RAM file"
    deadline = time.monotonic() + timeout
    while True:
        try:
            mailbox = Mailbox(fd, ram_layout(vm.config), vm.kernel.mailbox_address, PROTOCOL_VERSION)
        except ProtocolError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no hello in the mailbox {timeout:g} s after the reset; console:\n"
                                     f"{vm.console_tail()}") from None
            time.sleep(0.01)
            continue
        try:
            frame = decode_frame(mailbox.take_hello()[:-1])
        finally:
            mailbox.close()
        assert isinstance(frame, Notice) and frame.kind == "hello", frame
        return frame


def wait_for_banners(vm: Vm, count: int) -> None:
    """Until the console has shown the boot's line `count` times."""
    deadline = time.monotonic() + vm.timeout
    while vm.console_tail().count("agent ready") < count:
        assert time.monotonic() < deadline, f"no banner number {count} on the console:\n{vm.console_tail()}"
        time.sleep(0.01)


def test_a_reset_on_ram_the_last_boot_dirtied_boots_on_a_cleared_bss(mmhil_kernel: KernelImage, vm: Vm,
                                                                     tmp_path: Path) -> None:
    if not vm.config.shares_ram:
        pytest.skip(f"config {vm.config.name} keeps guest RAM private: the host cannot dirty it")
    bss_start = symbol(mmhil_kernel, "__bss_start") - KERNEL_VIRT_OFFSET
    bss_end = symbol(mmhil_kernel, "__bss_end") - KERNEL_VIRT_OFFSET
    dirt = b"\xff" * PAGE
    # A VM of its own, on the shared VM's accelerator. The harness turns every reset into a pause
    # (CRASH_ACTIONS); this one resets, as a QEMU started by hand does.
    rebooting = replace(vm.config, extra_args=(*vm.config.extra_args, "-action", "reboot=reset"))
    with Vm(rebooting, kernel=mmhil_kernel, accelerator=vm.accelerator, artifacts=tmp_path) as booted:
        fd = booted.machine.shared_ram_fd
        assert fd is not None
        offset = ram_layout(booted.config).file_offset(bss_start, bss_end - bss_start)
        wait_for_banners(booted, 1)  # the line follows the hello: a reset now would cut it short
        with booted.qemu.stopped():
            # Worse than any boot leaves it: every byte set, the boot tables and the mailbox included.
            os.pwrite(fd, dirt * ((bss_end - bss_start) // PAGE), offset)
            assert booted.machine.qmp is not None
            booted.machine.qmp.command("system_reset")
        hello = wait_for_hello(booted, booted.timeout)
        assert hello.values["build"] == mmhil_kernel.build_id
        assert hello.values["cpus"] == booted.config.smp
        still_dirty = [bss_start + at for at in range(0, bss_end - bss_start, PAGE)
                       if os.pread(fd, PAGE, offset + at) == dirt]
        assert not still_dirty, f"{len(still_dirty)} bss pages were not cleared, the first at {still_dirty[0]:#x}"
        wait_for_banners(booted, 2)
