/*
 * QEMU's firmware configuration device (docs/specs/fw_cfg.rst in QEMU), as the mmhil firmware
 * uses it: I/O ports on x86, items by selector, files by name, and the DMA interface that copies
 * an item to guest RAM in one port write.
 */
#pragma once

#define FW_CFG_PORT_SELECTOR 0x510 /* 16-bit write: the item later reads come from */
#define FW_CFG_PORT_DATA 0x511     /* 8-bit read: the item's next byte */
#define FW_CFG_PORT_DMA_HIGH 0x514 /* the DMA descriptor's address, big-endian halves: */
#define FW_CFG_PORT_DMA_LOW 0x518  /* writing the low half starts the transfer */

/* Items with fixed selectors. Integers are little-endian, the file directory big-endian. */
#define FW_CFG_SIGNATURE 0x00 /* "QEMU" */
#define FW_CFG_ID 0x01        /* feature bits */
#define FW_CFG_ID_DMA 0x02
#define FW_CFG_KERNEL_ENTRY 0x10 /* the PVH entry point of -kernel's ELF, which QEMU has loaded */
#define FW_CFG_CMDLINE_SIZE 0x14 /* -append's length, NUL included */
#define FW_CFG_CMDLINE_DATA 0x15
#define FW_CFG_SETUP_DATA 0x18 /* for a PVH kernel: the first 8 KiB of the ELF file */
#define FW_CFG_FILE_DIR 0x19

/* The DMA descriptor: every field big-endian. QEMU clears `control` when done, or sets ERROR. */
#define FW_CFG_DMA_ERROR 0x01
#define FW_CFG_DMA_READ 0x02
#define FW_CFG_DMA_SKIP 0x04
#define FW_CFG_DMA_SELECT 0x08 /* the selector is in bits 16..31 */

#ifndef __ASSEMBLER__
#include <stdint.h>

struct fw_cfg_dma {
	uint32_t control, length;
	uint64_t address;
};

#define FW_CFG_FILE_NAME_MAX 56

struct fw_cfg_file {
	uint32_t size;
	uint16_t select, reserved;
	char name[FW_CFG_FILE_NAME_MAX];
};

/*
 * The ACPI linker/loader script, file "etc/table-loader": 128-byte commands that place QEMU's
 * ACPI tables in guest RAM, patch the pointers between them and fix their checksums.
 */
#define LOADER_ALLOCATE 1
#define LOADER_ADD_POINTER 2
#define LOADER_ADD_CHECKSUM 3
#define LOADER_COMMAND_BYTES 128

struct loader_command {
	uint32_t command;
	union {
		struct {
			char file[FW_CFG_FILE_NAME_MAX];
			uint32_t align;
			uint8_t zone;
		} allocate;
		struct {
			char destination[FW_CFG_FILE_NAME_MAX], source[FW_CFG_FILE_NAME_MAX];
			uint32_t offset;
			uint8_t size;
		} add_pointer;
		struct {
			char file[FW_CFG_FILE_NAME_MAX];
			uint32_t result_offset, start, length;
		} add_checksum;
		uint8_t padding[LOADER_COMMAND_BYTES - 4];
	};
};

_Static_assert(sizeof(struct fw_cfg_file) == 64, "fw_cfg file directory entry");
_Static_assert(sizeof(struct loader_command) == LOADER_COMMAND_BYTES, "loader command");
#endif
