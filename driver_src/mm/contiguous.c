/*
 * MmAllocateContiguousMemory(SpecifyCache) and MmFreeContiguousMemory(SpecifyCache) (ddi-spec §10).
 *
 * [DECISION] Every allocation gets its own system-PTE mapping, never the physmap: the physmap is
 * write-back in 1 GiB or 2 MiB leaves, so it cannot give MmNonCached or MmWriteCombined pages, and
 * a private range lets the host prove a free unmapped it. The physmap's write-back alias of the
 * frames stays (as NT's does not); caches are written back before a non-write-back mapping is made.
 */
#include "contiguous.h"
#include "bugcodes.h"
#include "protocol.h"
#include "syspte.h"

#define CONTIGUOUS_MAX 256

struct contiguous_allocation {
	uint64_t va; /* 0 marks a free slot */
	pfn_t first;
	uint64_t pages;
};

static struct contiguous_allocation allocations[CONTIGUOUS_MAX];
static uint64_t allocation_count, page_count;

static const char irql_mm_dispatch_rule[] = "IrqlMmDispatch: MmFreeContiguousMemory above DISPATCH_LEVEL";

static bool is_power_of_two(uint64_t x)
{
	return x && !(x & (x - 1));
}

/*
 * [DECISION] (§10) NULL for zero bytes, an unknown caching type, a boundary that is not a power
 * of two or not a whole number of pages, a range that is empty, or one that cannot hold the
 * allocation; DISPATCH_LEVEL is served like PASSIVE (there is no slow path to avoid).
 */
PVOID MmAllocateContiguousMemorySpecifyCache(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS LowestAcceptableAddress,
					     PHYSICAL_ADDRESS HighestAcceptableAddress,
					     PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	uint64_t lowest = (uint64_t)LowestAcceptableAddress.QuadPart;
	uint64_t highest = (uint64_t)HighestAcceptableAddress.QuadPart;
	uint64_t boundary = (uint64_t)BoundaryAddressMultiple.QuadPart;
	if (!NumberOfBytes || NumberOfBytes > SYSTEM_PTE_COUNT * PAGE_SIZE || !cache_type_valid(CacheType))
		return 0;
	if (boundary && (!is_power_of_two(boundary) || boundary < PAGE_SIZE))
		return 0;
	uint64_t pages = (NumberOfBytes + PAGE_OFFSET_MASK) >> PAGE_SHIFT;
	pfn_t lowest_pfn = (lowest >> PAGE_SHIFT) + ((lowest & PAGE_OFFSET_MASK) != 0);
	pfn_t highest_pfn = highest >> PAGE_SHIFT; /* inclusive: the page holding the highest byte */
	if (lowest_pfn > highest_pfn || (boundary && pages > boundary >> PAGE_SHIFT))
		return 0;
	struct contiguous_allocation *slot = 0;
	for (unsigned i = 0; i < CONTIGUOUS_MAX && !slot; i++)
		if (!allocations[i].va)
			slot = &allocations[i];
	if (!slot)
		return 0;
	pfn_t first = frames_alloc_contiguous(pages, lowest_pfn, highest_pfn, boundary >> PAGE_SHIFT, PFN_CONTIGUOUS);
	if (first == PFN_NONE)
		return 0;
	if (CacheType != MmCached && CacheType != MmHardwareCoherentCached)
		asm volatile("wbinvd" ::: "memory"); /* no dirty write-back line may outlive the new mapping */
	uint64_t va = system_map_physical(first << PAGE_SHIFT, pages, PROT_READ_WRITE, CacheType);
	if (!va) {
		for (uint64_t i = 0; i < pages; i++)
			frame_free(first + i, PFN_CONTIGUOUS);
		return 0;
	}
	*slot = (struct contiguous_allocation){.va = va, .first = first, .pages = pages};
	allocation_count++;
	page_count += pages;
	return (PVOID)va;
}

/* [DECISION] (§10) the machine is one NUMA node, 0: MM_ANY_NODE_OK or 0 allocate, any other node is NULL. */
PVOID MmAllocateContiguousMemorySpecifyCacheNode(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS LowestAcceptableAddress,
						 PHYSICAL_ADDRESS HighestAcceptableAddress,
						 PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType,
						 NODE_REQUIREMENT PreferredNode)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	if (PreferredNode != MM_ANY_NODE_OK && PreferredNode != 0)
		return 0;
	return MmAllocateContiguousMemorySpecifyCache(NumberOfBytes, LowestAcceptableAddress, HighestAcceptableAddress,
						      BoundaryAddressMultiple, CacheType);
}

PVOID MmAllocateContiguousMemory(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS HighestAcceptableAddress)
{
	PHYSICAL_ADDRESS none = {.QuadPart = 0};
	return MmAllocateContiguousMemorySpecifyCache(NumberOfBytes, none, HighestAcceptableAddress, none, MmCached);
}

void MmFreeContiguousMemory(PVOID BaseAddress)
{
	KIRQL irql = KeGetCurrentIrql();
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_RULE_IRQL_MM_DISPATCH, (uint64_t)irql_mm_dispatch_rule, irql, 0);
	uint64_t va = (uint64_t)BaseAddress;
	struct contiguous_allocation *a = 0;
	for (unsigned i = 0; i < CONTIGUOUS_MAX && !a; i++)
		if (va && allocations[i].va == va)
			a = &allocations[i];
	if (!a)
		KeBugCheckEx(BAD_POOL_CALLER, POOL_BAD_CONTIGUOUS_FREE, va, 0, 0);
	system_unmap_physical(a->va, a->pages);
	for (uint64_t i = 0; i < a->pages; i++)
		frame_free(a->first + i, PFN_CONTIGUOUS);
	allocation_count--;
	page_count -= a->pages;
	*a = (struct contiguous_allocation){0};
}

/* [DECISION] (§10, as ReactOS) the size and caching type are not checked: the base names the allocation. */
void MmFreeContiguousMemorySpecifyCache(PVOID BaseAddress, SIZE_T NumberOfBytes, MEMORY_CACHING_TYPE CacheType)
{
	(void)NumberOfBytes;
	(void)CacheType;
	MmFreeContiguousMemory(BaseAddress);
}

uint64_t contiguous_virtual_of(pfn_t pfn)
{
	for (unsigned i = 0; i < CONTIGUOUS_MAX; i++) {
		const struct contiguous_allocation *a = &allocations[i];
		if (a->va && pfn >= a->first && pfn < a->first + a->pages)
			return a->va + ((pfn - a->first) << PAGE_SHIFT);
	}
	return 0;
}

static void report_contiguous(void)
{
	frame_decimal("contiguous_allocations", allocation_count);
	frame_decimal("contiguous_pages", page_count);
}
OUTSTANDING_REPORTER(report_contiguous);
