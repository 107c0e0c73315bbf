/* What the PVH hand-off (struct hvm_start_info) told us, copied before any frame is reused. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "pvh_start_info.h"

#define MEMMAP_MAX 128
#define CMDLINE_MAX 1024

struct memmap_entry {
	uint64_t base, size;
	uint32_t type;
};

struct boot_info {
	char cmdline[CMDLINE_MAX];
	unsigned memmap_count;
	struct memmap_entry memmap[MEMMAP_MAX];
	uint64_t rsdp; /* the ACPI RSDP's physical address, 0 when the firmware gave none */
};

extern struct boot_info boot_info;

/* Copies cmdline, memory map and the RSDP address; bugchecks with a console message when the
 * first two are unusable. */
void bootinfo_capture(uint32_t start_info_pa);
/* Until the kernel's own tables are loaded: a pointer to physical [pa, pa+size) through the boot
 * stub's identity map of the first GiB, or 0 when the range lies beyond it. */
const void *boot_physical(uint64_t pa, uint64_t size);

/* The value of the first "key=value" token of the command line, or false when there is none. */
bool cmdline_value(const char *key, const char **value, size_t *length);
