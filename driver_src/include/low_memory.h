/*
 * Physical RAM below 1 MiB. The frame allocator never hands it out (frames.h: PFN_FIRMWARE), so
 * what the firmware leaves here stays valid for the kernel's whole life.
 *
 *   0x00000 +----------------------------------------------+
 *           | unused (the real-mode IVT and BDA on a PC)    |
 *   0x01000 | mmhil firmware: hvm_start_info, memory map    |
 *   0x02000 | mmhil firmware: kernel command line           |
 *   0x03000 | mmhil firmware: fw_cfg file directory         |
 *   0x04000 | mmhil firmware: a fw_cfg file read whole      |
 *           | (the e820 map, then the ACPI loader's script) |
 *   0x06000 | mmhil firmware: its stack, growing down       |
 *   0x07000 +----------------------------------------------+
 *   0x08000 | kernel: the APs' real-mode trampoline         |
 *   0x09000 +----------------------------------------------+
 *   0x10000 | mmhil firmware: ACPI tables (fw_cfg's loader) |
 *   0x80000 +----------------------------------------------+
 *           | unused                                        |
 *   0xA0000 +----------------------------------------------+
 *           | the PC's legacy hole: VGA window, then the    |
 *           | BIOS ROM's alias (0xF0000 for 64 KiB). Not    |
 *           | RAM: the mmhil firmware's map says reserved   |
 *  0x100000 +----------------------------------------------+
 *
 * Other firmware (qboot, SeaBIOS) keeps its hand-off in this range too, wherever it likes.
 */
#pragma once

#define FIRMWARE_START_INFO_PA 0x1000 /* struct hvm_start_info, then its memory map */
#define FIRMWARE_CMDLINE_PA 0x2000
#define FIRMWARE_CMDLINE_MAX 0x1000
#define FIRMWARE_FILE_DIR_PA 0x3000
#define FIRMWARE_FILE_DIR_MAX 0x1000
#define FIRMWARE_FILE_PA 0x4000
#define FIRMWARE_FILE_MAX 0x2000
#define FIRMWARE_STACK_TOP 0x7000
#define FIRMWARE_ACPI_PA 0x10000
#define FIRMWARE_ACPI_END 0x80000
#define LEGACY_HOLE_PA 0xA0000
#define LEGACY_HOLE_END 0x100000

/* The APs' real-mode entry (SIPI vector AP_TRAMPOLINE_PA >> 12): one page, below 1 MiB. */
#define AP_TRAMPOLINE_PA 0x8000

#ifndef __ASSEMBLER__
_Static_assert(FIRMWARE_CMDLINE_PA + FIRMWARE_CMDLINE_MAX <= FIRMWARE_FILE_DIR_PA &&
	       FIRMWARE_FILE_DIR_PA + FIRMWARE_FILE_DIR_MAX <= FIRMWARE_FILE_PA &&
	       FIRMWARE_FILE_PA + FIRMWARE_FILE_MAX < FIRMWARE_STACK_TOP &&
	       FIRMWARE_STACK_TOP <= AP_TRAMPOLINE_PA && AP_TRAMPOLINE_PA + 0x1000 <= FIRMWARE_ACPI_PA &&
	       FIRMWARE_ACPI_END <= LEGACY_HOLE_PA, "the low-memory map's areas are in order and apart");
#endif
