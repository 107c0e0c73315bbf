#include "address_space.h"
#include "bugcodes.h"
#include "console.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"
#include "x86.h"

uint64_t physmap_size;
unsigned physmap_leaf_level;

static void map_or_stop(const struct pt_view *view, uint64_t va, unsigned level, uint64_t entry)
{
	struct tlb_flush flush = pt_set(view, va, level, entry);
	bool mapped = flush.changed;
	tlb_flush(flush);
	if (!mapped) /* only after boot can pt_set run out of frames; here carving bugchecks first */
		KeBugCheckEx(INSTALL_MORE_MEMORY, va, level, entry, 0);
}

/* Through the self-map of the live boot tables: the physmap cannot be used to build itself. */
static void build_physmap(void)
{
	physmap_leaf_level = cpu.pdpe1gb ? 3 : 2;
	uint64_t leaf = LEVEL_SIZE(physmap_leaf_level);
	struct pt_view live = pt_live_without_physmap();
	const struct ram_range *ram;
	unsigned count = ram_ranges(&ram);
	uint64_t mapped_end = 0;
	for (unsigned i = 0; i < count; i++) {
		uint64_t pa = (ram[i].first << PAGE_SHIFT) & ~(leaf - 1);
		uint64_t end = ((ram[i].end << PAGE_SHIFT) + leaf - 1) & ~(leaf - 1);
		if (pa < mapped_end)
			pa = mapped_end;
		if (pa >= end)
			continue;
		struct tlb_flush flush = pt_set_range(&live, PHYSMAP_BASE + pa, physmap_leaf_level, (end - pa) / leaf,
						      pte_kernel_leaf(pa, physmap_leaf_level, PROT_READ_WRITE), leaf);
		bool mapped = flush.changed;
		tlb_flush_not_needed(flush); /* empty slots: no CPU caches a non-present translation */
		if (!mapped) /* carving bugchecks before it runs out */
			KeBugCheckEx(INSTALL_MORE_MEMORY, PHYSMAP_BASE + pa, physmap_leaf_level, end - pa, 0);
		mapped_end = end;
	}
	physmap_size = mapped_end;
	if (physmap_size > PHYSMAP_LIMIT - PHYSMAP_BASE) {
		kprintf("mmhil: RAM up to 0x%lx does not fit the physmap\n", physmap_size);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_LIMIT, physmap_size, PHYSMAP_LIMIT - PHYSMAP_BASE, 0);
	}
}

static void map_image_section(const struct pt_view *tree, char *start, char *end, enum protection protection)
{
	uint64_t pages = (uint64_t)(end - start) >> PAGE_SHIFT;
	struct tlb_flush flush = pt_set_range(tree, (uint64_t)start, 1, pages,
					      pte_kernel_leaf(image_virt_to_phys(start), 1, protection), PAGE_SIZE);
	bool mapped = flush.changed;
	tlb_flush_not_needed(flush); /* a tree not yet in CR3 */
	if (!mapped)
		KeBugCheckEx(INSTALL_MORE_MEMORY, (uint64_t)start, pages, 0, 0);
}

/* The guard page below KERNEL_STACK_BASE stays unmapped: an overflow faults, then double-faults. */
static void map_kernel_stack(const struct pt_view *tree)
{
	for (uint64_t va = KERNEL_STACK_BASE; va < KERNEL_STACK_TOP; va += PAGE_SIZE) {
		pfn_t pfn = frame_alloc(PFN_KERNEL_STACK);
		map_or_stop(tree, va, 1, pte_kernel_leaf(pfn << PAGE_SHIFT, 1, PROT_READ_WRITE));
	}
}

/* The local APIC's registers, where the HAL region (layout.h) keeps them. */
static void map_devices(const struct pt_view *tree)
{
	if (cpu.apic)
		map_or_stop(tree, LOCAL_APIC_BASE, 1, pte_device_leaf(rdmsr(MSR_APIC_BASE) & PTE_ADDR_MASK));
}

/* The new tree points at the physmap's tables: one set of tables serves both trees. */
static void share_physmap(const struct pt_view *tree)
{
	struct pt_view live = pt_live();
	for (uint64_t va = PHYSMAP_BASE; va < PHYSMAP_BASE + physmap_size; va += LEVEL_SIZE(4)) {
		struct pt_walk walk = pt_walk_to(&live, va, 4);
		if (walk.stop != PT_TABLE)
			KeBugCheckEx(MEMORY_MANAGEMENT, MM_CORRUPTED_PTE, (uint64_t)walk.slot, walk.entry, va);
		map_or_stop(tree, va, 4, walk.entry);
	}
}

void address_space_switch(void (*next)(void))
{
	build_physmap();
	uint64_t root = frame_alloc(PFN_PAGE_TABLE) << PAGE_SHIFT;
	uint64_t *root_table = phys_to_virt(root);
	memset(root_table, 0, PAGE_SIZE);
	struct pt_view tree = pt_tree(root);
	map_image_section(&tree, __text_start, __text_end, PROT_READ_EXECUTE);
	map_image_section(&tree, __rodata_start, __rodata_end, PROT_READ);
	map_image_section(&tree, __data_start, __data_end, PROT_READ_WRITE);
	map_kernel_stack(&tree);
	map_devices(&tree);
	share_physmap(&tree);
	root_table[SELFMAP_SLOT] = pte_selfmap(root);

	asm volatile("mov %0, %%cr3\n\t"
		     "mov %1, %%rsp\n\t"
		     "xor %%ebp, %%ebp\n\t"
		     "call *%2\n\t"
		     "ud2"
		     :
		     : "r"(root), "r"(KERNEL_STACK_TOP), "r"(next)
		     : "memory");
	__builtin_unreachable();
}
