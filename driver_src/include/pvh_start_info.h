/*
 * The PVH boot ABI's hand-off (xen/include/public/arch-x86/hvm/start_info.h): what a firmware puts
 * behind EBX when it enters the kernel's PVH entry. Written by firmware/firmware.c, read by
 * boot/pvh.S and kernel/bootinfo.c; the layout is the same in 32-bit and 64-bit code.
 */
#pragma once

#define XEN_ELFNOTE_PHYS32_ENTRY 18 /* the ELF note that names the kernel's PVH entry */
#define HVM_START_MAGIC 0x336ec578
#define HVM_START_INFO_CMDLINE 24 /* offset of cmdline_paddr, for the boot stub */
/* The memory map's types are e820's. */
#define E820_RAM 1
#define E820_RESERVED 2

#ifndef __ASSEMBLER__
#include <stdint.h>

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
	uint64_t memmap_paddr; /* version >= 1 */
	uint32_t memmap_entries, reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

_Static_assert(sizeof(struct hvm_start_info) == 56, "PVH start_info layout");
_Static_assert(__builtin_offsetof(struct hvm_start_info, cmdline_paddr) == HVM_START_INFO_CMDLINE, "layout");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "PVH memmap entry layout");
#endif
