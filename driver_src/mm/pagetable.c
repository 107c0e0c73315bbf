#include "pagetable.h"
#include "bugcodes.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "ntddk.h"
#include "smp.h"
#include "x86.h"

unsigned paging_levels;

/* The self-map VA of the entry that maps va at level: "address of the PTE of" applied level times. */
static uint64_t selfmap_entry_address(unsigned level, uint64_t va)
{
	for (unsigned i = 0; i < level; i++)
		va = SELFMAP_PTE_ADDRESS(paging_levels, va);
	return va;
}

/* Where the level entry for va is stored; parent is the present entry one level up. */
static volatile uint64_t *entry_slot(const struct pt_view *view, unsigned level, uint64_t va, uint64_t parent)
{
	if (view->live)
		return (volatile uint64_t *)selfmap_entry_address(level, va);
	uint64_t table = level == paging_levels ? view->root_pa : parent & PTE_ADDR_MASK;
	return (volatile uint64_t *)phys_to_virt(table) + LEVEL_INDEX(va, level);
}

static bool is_leaf(uint64_t entry, unsigned level)
{
	return level == 1 || (level <= LEAF_MAX_LEVEL && (entry & PTE_PS));
}

struct pt_walk pt_walk_to(const struct pt_view *view, uint64_t va, unsigned stop_level)
{
	if (!va_is_canonical(va, paging_levels))
		return (struct pt_walk){.stop = PT_NON_CANONICAL};
	uint64_t entry = 0;
	for (unsigned level = paging_levels;; level--) {
		volatile uint64_t *slot = entry_slot(view, level, va, entry);
		entry = *slot;
		struct pt_walk walk = {PT_TABLE, level, entry, slot};
		if (!(entry & PTE_P))
			walk.stop = PT_NOT_PRESENT;
		else if (is_leaf(entry, level))
			walk.stop = PT_LEAF;
		if (walk.stop != PT_TABLE || level == stop_level)
			return walk;
	}
}

static NORETURN void unexpected_entry(volatile uint64_t *slot, uint64_t entry)
{
	KeBugCheckEx(MEMORY_MANAGEMENT, MM_CORRUPTED_PTE, (uint64_t)slot, entry, 0);
}

/* Installs frame pfn, zeroed, as the table under the empty slot at level. The table is zeroed
 * before the slot names it, so no walk (another CPU's, a speculative one) reads the frame's old
 * contents as entries, and a shadow MMU (nested KVM here) traps no store to a live table. Only
 * while the physmap is being built must it be zeroed through the self-map, once linked. */
static void install_table(const struct pt_view *view, volatile uint64_t *slot, unsigned level, uint64_t va, pfn_t pfn)
{
	uint64_t table_pa = pfn << PAGE_SHIFT;
	if (!view->no_physmap)
		memset(phys_to_virt(table_pa), 0, PAGE_SIZE);
	*slot = pte_table(table_pa);
	if (view->live) {
		/* The new table appears in the self-map; no stale translation can exist, flush anyway. */
		uint64_t table_va = selfmap_entry_address(level - 1, va) & ~PAGE_OFFSET_MASK;
		invlpg(table_va);
		if (view->no_physmap)
			memset((void *)table_va, 0, PAGE_SIZE);
	}
}

/* Two CPUs may need the same missing table at once: one installs it, the other then finds it. */
static KSPIN_LOCK table_creation_lock;

static bool install_missing_table(const struct pt_view *view, volatile uint64_t *slot, unsigned level, uint64_t va)
{
	KIRQL irql;
	KeAcquireSpinLock(&table_creation_lock, &irql);
	bool present = *slot & PTE_P;
	if (!present) {
		pfn_t pfn = frame_alloc(PFN_PAGE_TABLE);
		present = pfn != PFN_NONE;
		if (present)
			install_table(view, slot, level, va, pfn);
	}
	KeReleaseSpinLock(&table_creation_lock, irql);
	return present;
}

/* The slot at level for va, creating the tables above it; 0 when no frame is left for one. */
static volatile uint64_t *prepared_slot(const struct pt_view *view, uint64_t va, unsigned level)
{
	uint64_t parent = 0;
	for (unsigned l = paging_levels; l > level; l--) {
		volatile uint64_t *slot = entry_slot(view, l, va, parent);
		if (!(*slot & PTE_P) && !install_missing_table(view, slot, l, va))
			return 0;
		parent = *slot;
		if (is_leaf(parent, l))
			unexpected_entry(slot, parent);
	}
	return entry_slot(view, level, va, parent);
}

bool pt_prepare(const struct pt_view *view, uint64_t va, unsigned level)
{
	return prepared_slot(view, va, level) != 0;
}

void pt_link_table(const struct pt_view *view, uint64_t va, unsigned level, pfn_t table)
{
	volatile uint64_t *slot = prepared_slot(view, va, level);
	if (!slot)
		KeBugCheckEx(INSTALL_MORE_MEMORY, va, level, 0, 0);
	KIRQL irql;
	KeAcquireSpinLock(&table_creation_lock, &irql);
	if (*slot & PTE_P)
		unexpected_entry(slot, *slot);
	install_table(view, slot, level, va, table);
	KeReleaseSpinLock(&table_creation_lock, irql);
}

struct tlb_flush pt_set(const struct pt_view *view, uint64_t va, unsigned level, uint64_t entry)
{
	volatile uint64_t *slot = prepared_slot(view, va, level);
	if (!slot)
		return (struct tlb_flush){.changed = false};
	if (*slot & PTE_P)
		unexpected_entry(slot, *slot);
	*slot = entry;
	return (struct tlb_flush){.va = va, .changed = true, .live = view->live};
}

struct tlb_flush pt_set_range(const struct pt_view *view, uint64_t va, unsigned level, uint64_t count,
			      uint64_t first_entry, uint64_t pa_step)
{
	struct tlb_flush token = {.va = va, .changed = false, .live = view->live};
	uint64_t entry = first_entry;
	while (count) {
		volatile uint64_t *slot = prepared_slot(view, va, level);
		if (!slot)
			return token; /* what was mapped stays: its slots were empty, nothing to flush */
		uint64_t run = PT_ENTRIES - LEVEL_INDEX(va, level);
		if (run > count)
			run = count;
		for (uint64_t i = 0; i < run; i++, entry += pa_step) {
			if (slot[i] & PTE_P)
				unexpected_entry(&slot[i], slot[i]);
			slot[i] = entry;
		}
		va += run * LEVEL_SIZE(level);
		count -= run;
	}
	token.changed = true;
	return token;
}

struct tlb_flush pt_clear(const struct pt_view *view, uint64_t va, uint64_t *old_entry)
{
	struct pt_walk walk = pt_walk(view, va);
	if (walk.stop != PT_LEAF)
		unexpected_entry(walk.slot, walk.entry);
	*walk.slot = 0;
	*old_entry = walk.entry;
	cpu_set_t holders = view->private ? CPU_BIT(this_cpu()->index) : cpus_online;
	return (struct tlb_flush){.va = va, .changed = true, .live = view->live, .was_present = true, .cpus = holders};
}

struct tlb_flush pt_replace(const struct pt_view *view, uint64_t va, uint64_t entry)
{
	struct pt_walk walk = pt_walk(view, va);
	if (walk.stop != PT_LEAF || walk.level != 1)
		unexpected_entry(walk.slot, walk.entry);
	*walk.slot = entry;
	cpu_set_t holders = view->private ? CPU_BIT(this_cpu()->index) : cpus_online;
	return (struct tlb_flush){.va = va, .changed = true, .live = view->live, .was_present = true, .cpus = holders};
}

uint64_t pte_kernel_leaf(uint64_t pa, unsigned level, enum protection protection)
{
	uint64_t entry = pa | PTE_P | PTE_A | PTE_D;
	if (level > 1)
		entry |= PTE_PS;
	if (cpu.pge)
		entry |= PTE_G;
	if (protection == PROT_READ_WRITE || protection == PROT_READ_WRITE_EXECUTE)
		entry |= PTE_RW;
	if (cpu.nx && (protection == PROT_READ || protection == PROT_READ_WRITE))
		entry |= PTE_NX;
	return entry;
}

uint64_t pte_device_leaf(uint64_t pa)
{
	return pte_kernel_leaf(pa, 1, PROT_READ_WRITE) | PTE_PCD | PTE_PWT;
}

uint64_t pte_table(uint64_t table_pa)
{
	return table_pa | PTE_P | PTE_RW | PTE_A;
}

uint64_t pte_selfmap(uint64_t root_pa)
{
	return pte_table(root_pa) | (cpu.nx ? PTE_NX : 0);
}
