"""The project's firmware (driver_src/firmware) on microvm: what it hands the kernel, read back from guest
RAM by the host and checked against the kernel's report, QEMU's description of the machine, and qboot
booting the same kernel; and how it stops when it cannot boot.

Addresses are low_memory.h's: the firmware puts struct hvm_start_info at FIRMWARE_START_INFO_PA.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from harness.build import KernelImage
from harness.config import VmConfig, load_configs
from harness.errors import FirmwareError
from harness.machine import STATUS_FIRMWARE_FAILED, LaunchPlan, QemuMachine
from harness.oracle.memory import PhysicalMemory
from harness.vm import Vm

START_INFO_PA = 0x1000
START_INFO = struct.Struct("<IIIIQQQQII")  # struct hvm_start_info, version 1
MEMMAP_ENTRY = struct.Struct("<QQII")
HVM_START_MAGIC = 0x336EC578
SDT_HEADER_BYTES = 36
MADT_LOCAL_APIC, MADT_ENABLED = 0, 0x1
E820_RAM, E820_RESERVED = 1, 2
LEGACY_HOLE = (0xA0000, 0x100000)  # low_memory.h: reserved in the firmware's map, as on a PC

pytestmark = pytest.mark.requires(firmware="mmhil")


def c_string(memory: PhysicalMemory, pa: int, limit: int = 4096) -> str:
    data = memory.read(pa, limit)
    assert b"\0" in data, f"no NUL within {limit} bytes at {pa:#x}"
    return data[: data.index(b"\0")].decode()


def sums_to_zero(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def table_at(memory: PhysicalMemory, pa: int) -> bytes:
    length = struct.unpack_from("<I", memory.read(pa, SDT_HEADER_BYTES), 4)[0]
    data = memory.read(pa, length)
    assert sums_to_zero(data), f"ACPI table {data[:4]!r} at {pa:#x}: its {length} bytes do not sum to zero"
    return data


def acpi_tables(memory: PhysicalMemory, rsdp_pa: int) -> dict[str, bytes]:
    """Every table reachable from the RSDP (through the XSDT, or the RSDT before ACPI 2.0, and the FADT's
    DSDT), each one's checksum checked: a pointer the loader patched wrongly lands on no table."""
    rsdp = memory.read(rsdp_pa, 36)
    assert rsdp[:8] == b"RSD PTR ", f"no RSDP at {rsdp_pa:#x}: {rsdp[:8]!r}"
    assert sums_to_zero(rsdp[:20]), "the RSDP's ACPI 1.0 checksum"
    if rsdp[15] >= 2:
        assert sums_to_zero(memory.read(rsdp_pa, struct.unpack_from("<I", rsdp, 20)[0])), "the RSDP's extended checksum"
        root_pa, entry_bytes = struct.unpack_from("<Q", rsdp, 24)[0], 8
    else:
        root_pa, entry_bytes = struct.unpack_from("<I", rsdp, 16)[0], 4
    root = table_at(memory, root_pa)
    tables = {root[:4].decode(): root}
    for offset in range(SDT_HEADER_BYTES, len(root), entry_bytes):
        table = table_at(memory, int.from_bytes(root[offset : offset + entry_bytes], "little"))
        tables[table[:4].decode()] = table
    if "FACP" in tables:
        tables["DSDT"] = table_at(memory, struct.unpack_from("<I", tables["FACP"], 40)[0])
    return tables


def enabled_apic_ids(madt: bytes) -> list[int]:
    ids, offset = [], 44  # the header, the local APIC's address and the flags
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2, f"MADT entry of length {length} at offset {offset}"
        if kind == MADT_LOCAL_APIC and struct.unpack_from("<I", madt, offset + 4)[0] & MADT_ENABLED:
            ids.append(madt[offset + 3])
        offset += length
    return ids


def start_info(memory: PhysicalMemory) -> tuple[int, ...]:
    return START_INFO.unpack(memory.read(START_INFO_PA, START_INFO.size))


def test_the_start_info_holds_the_command_line_and_memory_map_the_kernel_reports(vm: Vm) -> None:
    memory = vm.verify.memory
    magic, version, _, modules, _, cmdline_pa, _, memmap_pa, entries, _ = start_info(memory)
    assert (magic, version, modules) == (HVM_START_MAGIC, 1, 0)
    assert c_string(memory, cmdline_pa) == vm.hello["cmdline"] == vm.machine.args[vm.machine.args.index("-append") + 1]
    handed = [MEMMAP_ENTRY.unpack(memory.read(memmap_pa + i * MEMMAP_ENTRY.size, MEMMAP_ENTRY.size))
              for i in range(entries)]
    assert [(base, size, kind) for base, size, kind, _ in handed] == vm.memory_map
    ram = sum(size for _, size, kind in vm.memory_map if kind == E820_RAM)
    assert ram + LEGACY_HOLE[1] - LEGACY_HOLE[0] == vm.config.memory_bytes, "all of -m but the legacy hole"
    assert (LEGACY_HOLE[0], LEGACY_HOLE[1] - LEGACY_HOLE[0], E820_RESERVED) in vm.memory_map


def test_the_acpi_tables_it_placed_check_out_and_list_the_cpus_the_kernel_started(vm: Vm) -> None:
    memory = vm.verify.memory
    rsdp_pa = start_info(memory)[6]
    assert 0 < rsdp_pa < 0x100000, f"the RSDP at {rsdp_pa:#x} is outside the firmware's RAM below 1 MiB"
    tables = acpi_tables(memory, rsdp_pa)
    assert {"APIC", "DSDT"} <= set(tables), sorted(tables)
    kernel_ids = sorted(vm.mm.on_cpu(k).cpu_info().apic_id for k in range(vm.vcpus))
    assert sorted(enabled_apic_ids(tables["APIC"])) == kernel_ids
    assert len(kernel_ids) == vm.config.smp


def test_qboot_hands_the_same_kernel_the_same_machine(vm: Vm, mmhil_kernel: KernelImage, tmp_path: Path) -> None:
    with Vm(replace(vm.config, firmware="qboot"), kernel=mmhil_kernel, accelerator=vm.accelerator,
            artifacts=tmp_path) as under_qboot:
        assert "-bios" in under_qboot.machine.args and vm.kernel.firmware_for(under_qboot.config) is None
        for key in ("cmdline", "cpus", "paging"):
            assert under_qboot.hello[key] == vm.hello[key], key
        # Above 1 MiB the same RAM; below it, qboot also keeps back 1 KiB for an EBDA that we have no use for.
        ram, qboot_ram = ([e for e in machine.memory_map if e[2] == E820_RAM] for machine in (vm, under_qboot))
        assert [e for e in qboot_ram if e[0] >= LEGACY_HOLE[1]] == [e for e in ram if e[0] >= LEGACY_HOLE[1]]
        low, qboot_low = ([e for e in entries if e[0] < LEGACY_HOLE[1]] for entries in (ram, qboot_ram))
        assert low == [(0, LEGACY_HOLE[0], E820_RAM)]
        assert qboot_low[0][0] == 0 and sum(e[1] for e in qboot_low) <= LEGACY_HOLE[0]
        assert sorted(under_qboot.mm.on_cpu(k).cpu_info().apic_id for k in range(under_qboot.vcpus)) == \
            sorted(vm.mm.on_cpu(k).cpu_info().apic_id for k in range(vm.vcpus))


@pytest.fixture(scope="module")
def default_config() -> VmConfig:
    """How the firmware stops does not depend on the machine: these tests run once, on config default."""
    return load_configs()["default"]


def test_a_command_line_too_long_for_it_stops_the_vm_with_the_firmware_s_reason(
    default_config: VmConfig, mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    config = replace(default_config, kernel_cmdline="x" * 5000)
    vm = Vm(config, kernel=mmhil_kernel, accelerator="tcg", artifacts=tmp_path)
    with pytest.raises(FirmwareError) as caught:
        vm.boot()
    length = len(vm.machine.args[vm.machine.args.index("-append") + 1]) + 1  # fw_cfg counts the NUL
    assert caught.value.reason == \
        f"the command line (-append) is longer than the firmware's page for it: bytes {length:#010x}"
    assert "mmhil firmware:" in caught.value.console_tail
    assert vm.machine.exit_status == STATUS_FIRMWARE_FAILED and not vm.machine.running


def test_without_a_kernel_it_says_so_on_the_console_and_ends_qemu_with_status_65(
    default_config: VmConfig, mmhil_kernel: KernelImage, tmp_path: Path
) -> None:
    plan = LaunchPlan(kernel=None, accelerator="tcg", artifacts=tmp_path, shared_ram=False,
                      firmware=mmhil_kernel.firmware_for(default_config))
    machine = QemuMachine(default_config, plan)
    machine.launch()
    try:
        machine.resume()  # its answer may never come: QEMU can exit before it leaves
        assert machine.wait_exit(10.0) == STATUS_FIRMWARE_FAILED
    finally:
        machine.shutdown()
    assert "mmhil firmware: no kernel to boot: QEMU was started without -kernel" in machine.console_log.read_text()
