/*
 * The boot report: what the kernel found and where it put things, printed on the console when the
 * agent's `boot_report` asks. Boot itself prints one line: under nested KVM every console byte is a
 * VM exit (~17 us), and this report (~1.4 KB) took a quarter of the boot.
 */
#include "address_space.h"
#include "boot_phases.h"
#include "bootinfo.h"
#include "console.h"
#include "cpu.h"
#include "frames.h"
#include "layout.h"
#include "pagetable.h"
#include "pool.h"
#include "smp.h"
#include "syspte.h"

static void report_paging(void)
{
	kprintf("mmhil: paging: %u-level%s, self-map slot 0x%x, PTE_BASE 0x%016lx\n", paging_levels,
		paging_levels == 5 ? " (LA57)" : "", SELFMAP_SLOT, SELFMAP_PTE_BASE(paging_levels));
	kprintf("mmhil: cpu:%s%s%s%s%s%s%s%s%s\n", cpu.nx ? " nx" : "", cpu.pge ? " pge" : "", cpu.pat ? " pat" : "",
		cpu.smep ? " smep" : "", cpu.smap ? " smap" : "", cpu.pdpe1gb ? " pdpe1gb" : "",
		cpu.la57 ? " la57" : "", cpu.apic ? " apic" : "", cpu.hypervisor ? " hypervisor" : "");
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

void boot_report_print(void)
{
	kprintf("mmhil: cmdline \"%s\"\n", boot_info.cmdline);
	report_paging();
	report_memory_map();
	report_frames();
	report_layout();
	smp_report();
}
