#include "bootinfo.h"
#include "bugcodes.h"
#include "console.h"
#include "kstring.h"
#include "ntddk.h"
#include "paging.h"

#define BOOT_MAP_LIMIT LEVEL_SIZE(3) /* the boot stub identity-maps the first 1 GiB */

struct boot_info boot_info;

const void *boot_physical(uint64_t pa, uint64_t size)
{
	return pa < BOOT_MAP_LIMIT && size <= BOOT_MAP_LIMIT - pa ? (const void *)pa : 0;
}

/* Boot-time physical access goes through the stub's identity map of the first GiB. */
static const void *boot_identity(uint64_t pa, uint64_t size)
{
	const void *p = boot_physical(pa, size);
	if (!p) {
		kprintf("mmhil: boot data at 0x%lx (+0x%lx) lies outside the first GiB\n", pa, size);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_OUT_OF_REACH, pa, size, 0);
	}
	return p;
}

static void capture_cmdline(uint64_t pa)
{
	if (!pa)
		return;
	const char *src = boot_identity(pa, 1);
	size_t n = 0;
	while (n < CMDLINE_MAX - 1 && src[n]) {
		boot_identity(pa + n, 1);
		boot_info.cmdline[n] = src[n];
		n++;
	}
	if (src[n])
		kprintf("mmhil: command line truncated to %u bytes\n", CMDLINE_MAX - 1);
}

static void capture_memmap(const struct hvm_start_info *si)
{
	if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries) {
		kprintf("mmhil: hvm_start_info carries no memory map (version %u, memmap_paddr 0x%lx, "
			"memmap_entries %u); this kernel needs PVH start_info version 1 with a memmap\n",
			si->version, si->memmap_paddr, si->memmap_entries);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_NO_MEMORY_MAP, si->version, si->memmap_paddr,
			     si->memmap_entries);
	}
	if (si->memmap_entries > MEMMAP_MAX) {
		kprintf("mmhil: memory map has %u entries, more than %u\n", si->memmap_entries, MEMMAP_MAX);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_LIMIT, si->memmap_entries, MEMMAP_MAX, 0);
	}
	const struct hvm_memmap_table_entry *table =
		boot_identity(si->memmap_paddr, si->memmap_entries * sizeof(*table));
	for (unsigned i = 0; i < si->memmap_entries; i++) {
		if (!table[i].size) /* qboot (microvm) appends an all-zero entry */
			continue;
		boot_info.memmap[boot_info.memmap_count++] =
			(struct memmap_entry){table[i].addr, table[i].size, table[i].type};
	}
}

void bootinfo_capture(uint32_t start_info_pa)
{
	const struct hvm_start_info *si = boot_identity(start_info_pa, sizeof(*si));
	if (si->magic != HVM_START_MAGIC) {
		kprintf("mmhil: no PVH start_info at 0x%x (magic 0x%x)\n", start_info_pa, si->magic);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_BAD_START_INFO, si->magic, start_info_pa, 0);
	}
	capture_cmdline(si->cmdline_paddr);
	capture_memmap(si);
	boot_info.rsdp = si->rsdp_paddr;
}

bool cmdline_value(const char *key, const char **value, size_t *length)
{
	size_t key_len = strlen(key);
	for (const char *p = boot_info.cmdline; *p;) {
		while (*p == ' ')
			p++;
		const char *end = p;
		while (*end && *end != ' ')
			end++;
		if ((size_t)(end - p) > key_len && !memcmp(p, key, key_len) && p[key_len] == '=') {
			*value = p + key_len + 1;
			*length = (size_t)(end - *value);
			return true;
		}
		p = end;
	}
	return false;
}
