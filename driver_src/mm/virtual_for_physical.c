/*
 * MmGetVirtualForPhysical (ddi-spec §5): the system VA through which a RAM page is primarily
 * mapped. [DECISION] (§5) by the frame's owner: a contiguous allocation answers with its own
 * mapping, a pool page with its pool VA (found by scanning the pool's page tables, since the PFN
 * database keeps no back-pointer), a kernel-image page with its image VA. Every other RAM frame
 * answers its physmap VA, the kernel's direct map being the one system mapping all RAM has:
 * frames with no owner mapping (DXGK contiguous objects, which hold PFN_CONTIGUOUS frames without
 * an allocation record; MDL pages, whose MDL mappings are secondary) included. A PA that is not
 * RAM (I/O space, holes) answers NULL.
 */
#include "contiguous.h"
#include "layout.h"
#include "pool.h"

/* The pool VA whose leaf maps pfn, or 0: only PDEs that point to a page table are looked into. */
static uint64_t pool_virtual_of(pfn_t pfn)
{
	struct pt_view live = pt_live();
	for (uint64_t table_va = nonpaged_pool_base; table_va < nonpaged_pool_base + NONPAGED_POOL_SIZE;
	     table_va += LEVEL_SIZE(2)) {
		if (pt_walk_to(&live, table_va, 2).stop != PT_TABLE)
			continue;
		volatile uint64_t *ptes = pt_walk(&live, table_va).slot;
		for (unsigned i = 0; i < PT_ENTRIES; i++)
			if ((ptes[i] & PTE_P) && (ptes[i] & PTE_ADDR_MASK) >> PAGE_SHIFT == pfn)
				return table_va + i * PAGE_SIZE;
	}
	return 0;
}

PVOID MmGetVirtualForPhysical(PHYSICAL_ADDRESS PhysicalAddress)
{
	uint64_t pa = (uint64_t)PhysicalAddress.QuadPart, offset = pa & PAGE_OFFSET_MASK;
	pfn_t pfn = pa >> PAGE_SHIFT;
	uint64_t page_va;
	switch (frame_state(pfn)) {
	case PFN_NOT_RAM:
		return 0;
	case PFN_CONTIGUOUS:
		page_va = contiguous_virtual_of(pfn);
		break;
	case PFN_POOL:
		page_va = pool_virtual_of(pfn);
		break;
	case PFN_KERNEL_IMAGE:
		page_va = KERNEL_VIRT_OFFSET + (pfn << PAGE_SHIFT);
		break;
	default:
		page_va = 0;
		break;
	}
	if (!page_va)
		page_va = (uint64_t)phys_to_virt(pfn << PAGE_SHIFT);
	return (PVOID)(page_va + offset);
}
