/*
 * Boot sequence. kernel_boot() runs on the boot stub's temporary tables and stack; from
 * kernel_run() on, the kernel lives on its own tables (layout.h) and its guarded stack.
 */
#include "address_space.h"
#include "agent.h"
#include "bootinfo.h"
#include "build_info.h"
#include "console.h"
#include "copy.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "local_apic.h"
#include "pagetable.h"
#include "pic.h"
#include "pool.h"
#include "smp.h"
#include "syspte.h"
#include "trap.h"

NORETURN void kernel_boot(uint32_t start_info_pa, uint32_t levels);

static void report_paging(void)
{
	const char *value;
	size_t length;
	bool given = cmdline_value("paging", &value, &length);
	bool says_4 = given && length == 1 && value[0] == '4';
	bool says_5 = given && length == 1 && value[0] == '5';
	bool says_auto = given && length == 4 && !memcmp(value, "auto", 4);
	if (given && !says_4 && !says_5 && !says_auto)
		kprintf("mmhil: paging=%.*s is not 4, 5 or auto: using auto\n", (int)length, value);
	if (says_5 && paging_levels == 4)
		kprintf("mmhil: paging=5 requested but the CPU has no LA57: falling back to 4-level paging\n");
	kprintf("mmhil: paging: %u-level%s, self-map slot 0x%x, PTE_BASE 0x%016lx\n", paging_levels,
		paging_levels == 5 ? " (LA57)" : "", SELFMAP_SLOT, SELFMAP_PTE_BASE(paging_levels));
	kprintf("mmhil: cpu:%s%s%s%s%s%s%s%s\n", cpu.nx ? " nx" : "", cpu.pge ? " pge" : "", cpu.pat ? " pat" : "",
		cpu.smep ? " smep" : "", cpu.smap ? " smap" : "", cpu.pdpe1gb ? " pdpe1gb" : "",
		cpu.la57 ? " la57" : "", cpu.apic ? " apic" : "");
}

static void report_memory_map(void)
{
	for (unsigned i = 0; i < boot_info.memmap_count; i++) {
		const struct memmap_entry *e = &boot_info.memmap[i];
		kprintf("mmhil: memmap 0x%016lx-0x%016lx type %u%s\n", e->base, e->base + e->size - 1, e->type,
			e->type == E820_RAM ? " (RAM)" : "");
	}
}

static void report_frames(void)
{
	struct frame_stats s = frame_stats();
	kprintf("mmhil: frames: %lu RAM (%lu MiB), %lu free, highest pfn 0x%lx, above 4 GiB %lu (%lu in use)\n",
		s.total, s.total >> 8, s.free, s.highest_pfn, s.above_4g_total, s.above_4g_in_use);
	kprintf("mmhil: frames by state:");
	for (unsigned state = 0; state < PFN_STATE_COUNT; state++)
		kprintf(" %s %lu", pfn_state_name(state), frames_in_state(state));
	kprintf("\n");
}

static void report_layout(void)
{
	kprintf("mmhil: layout: text   0x%016lx-0x%016lx RX\n", (uint64_t)__text_start, (uint64_t)__text_end);
	kprintf("mmhil: layout: rodata 0x%016lx-0x%016lx R NX\n", (uint64_t)__rodata_start, (uint64_t)__rodata_end);
	kprintf("mmhil: layout: data   0x%016lx-0x%016lx RW NX\n", (uint64_t)__data_start, (uint64_t)__data_end);
	kprintf("mmhil: layout: stack  0x%016lx-0x%016lx RW NX, guard page below\n", KERNEL_STACK_BASE,
		KERNEL_STACK_TOP);
	kprintf("mmhil: layout: physmap 0x%016lx +0x%lx in %s leaves\n", PHYSMAP_BASE, physmap_size,
		physmap_leaf_level == 3 ? "1 GiB" : "2 MiB");
	kprintf("mmhil: layout: self-map 0x%016lx, system PTEs 0x%016lx-0x%016lx\n",
		SELFMAP_PTE_BASE(paging_levels), SYSTEM_PTE_BASE, SYSTEM_PTE_END);
	kprintf("mmhil: layout: PFN database 0x%016lx-0x%016lx, nonpaged pool 0x%016lx-0x%016lx\n",
		PFN_DATABASE_BASE, pfn_database_end(), nonpaged_pool_base, nonpaged_pool_base + NONPAGED_POOL_SIZE);
}

static NORETURN void kernel_run(void)
{
	pfn_database_init();
	pool_init();
	syspte_init();
	copy_init();
	report_frames();
	report_layout();
	local_apic_virtual_wire();
	smp_start_aps();
	kprintf("mmhil: agent ready\n");
	agent_run();
}

void kernel_boot(uint32_t start_info_pa, uint32_t levels)
{
	paging_levels = levels;
	smp_init_bsp();
	console_init();
	pic_init();
	agent_init();
	trap_init();
	kprintf("mmhil: guest kernel, build %s\n", mmhil_build_id);
	cpu_detect();
	bootinfo_capture(start_info_pa);
	kprintf("mmhil: cmdline \"%s\"\n", boot_info.cmdline);
	smp_discover(boot_info.rsdp);
	report_paging();
	cpu_enable_features();
	report_memory_map();
	frames_bootstrap();
	address_space_switch(kernel_run);
}
