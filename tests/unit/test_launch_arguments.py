"""QEMU's command line for a launch: which firmware ROM a config gets (no QEMU is started here)."""

from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import DEFAULT_CONFIG_DIR, VmConfig, load_configs
from harness.errors import InfrastructureError
from harness.machine import QBOOT_ROM, LaunchPlan, qemu_arguments


def arguments(config: VmConfig, plan: LaunchPlan) -> list[str]:
    return qemu_arguments(config, plan, qmp="socket,fd=3", console="socket,fd=4", agent="socket,fd=5", ram_path=None)


def bios_of(args: list[str]) -> str | None:
    return args[args.index("-bios") + 1] if "-bios" in args else None


def test_a_config_with_the_mmhil_firmware_boots_the_rom_its_build_made(tmp_path: Path) -> None:
    config = load_configs(DEFAULT_CONFIG_DIR)["default"]
    rom = tmp_path / "mmhil-firmware.bin"
    plan = LaunchPlan(kernel=tmp_path / "kernel.elf", accelerator="tcg", artifacts=tmp_path, shared_ram=False,
                      firmware=rom)
    assert config.firmware == "mmhil"
    assert bios_of(arguments(config, plan)) == str(rom)


def test_a_kernel_without_its_firmware_image_is_refused_before_qemu_starts(tmp_path: Path) -> None:
    config = load_configs(DEFAULT_CONFIG_DIR)["default"]
    plan = LaunchPlan(kernel=tmp_path / "kernel.elf", accelerator="tcg", artifacts=tmp_path, shared_ram=False)
    with pytest.raises(InfrastructureError, match="boots the mmhil firmware, but the launch names no image"):
        arguments(config, plan)


def test_a_machine_without_a_guest_needs_no_firmware_image_and_qboot_stays_selectable(tmp_path: Path) -> None:
    configs = load_configs(DEFAULT_CONFIG_DIR)
    no_guest = LaunchPlan(kernel=None, accelerator="tcg", artifacts=tmp_path, shared_ram=False)
    assert bios_of(arguments(configs["default"], no_guest)) is None
    qboot = replace(configs["default"], firmware="qboot")
    assert bios_of(arguments(qboot, no_guest)) == QBOOT_ROM
