/*
 * MmMapIoSpace, MmMapIoSpaceEx, MmUnmapIoSpace (ddi-spec §9) over the system PTE allocator.
 *
 * [DECISION] (§9) every live mapping is recorded as (returned VA, bytes, PA); an unmap must name
 * both exactly as the map call returned and was given, else SYSTEM_PTE_MISUSE 0x400. Mapping a
 * RAM frame that is not locked for I/O is MEMORY_MANAGEMENT 0x1233 (P2 the PFN), as NT does:
 * RAM belongs to its owner, and only an MDL lock keeps the owner from freeing it under the mapping.
 * Pages of MmAllocatePagesForMdl(Ex) count as locked, as they do for the MDL mappings (mdl_map.c).
 */
#include "iospace.h"
#include "bugcodes.h"
#include "frames.h"
#include "protocol.h"
#include "syspte.h"
#include "x86.h"

#define IO_MAPPINGS_MAX 256

struct io_mapping {
	uint64_t va;    /* as returned: with the PA's byte offset; 0 marks a free slot */
	uint64_t bytes; /* as asked */
	uint64_t pa;
};

static struct io_mapping io_mappings[IO_MAPPINGS_MAX];
static uint64_t io_mapping_count, io_page_count;

static uint64_t span_pages(uint64_t address, uint64_t bytes)
{
	return ((address & PAGE_OFFSET_MASK) + bytes + PAGE_OFFSET_MASK) >> PAGE_SHIFT;
}

bool cache_type_valid(MEMORY_CACHING_TYPE CacheType)
{
	return (uint32_t)CacheType < MmMaximumCacheType;
}

/* §1.2 folds the six types into three; §2.5 [DECISION] gives their PAT index bits (PAT bit 0). */
static uint64_t cache_bits(MEMORY_CACHING_TYPE cache_type)
{
	switch (cache_type) {
	case MmNonCached:
	case MmNonCachedUnordered:
		return PTE_PWT | PTE_PCD;
	case MmWriteCombined:
	case MmUSWCCached:
		return PTE_PWT;
	default:
		return 0;
	}
}

uint64_t system_map_physical(uint64_t first_pa, uint64_t pages, enum protection protection,
			     MEMORY_CACHING_TYPE cache_type)
{
	uint64_t va = syspte_reserve(pages);
	if (!va)
		return 0;
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t leaf = pte_kernel_leaf(first_pa + i * PAGE_SIZE, 1, protection) | cache_bits(cache_type);
		/* The region's tables exist from boot on, so pt_set never needs a frame here. */
		tlb_flush(pt_set(&live, va + i * PAGE_SIZE, 1, leaf));
	}
	return va;
}

void system_unmap_physical(uint64_t va, uint64_t pages)
{
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t old;
		tlb_flush(pt_clear(&live, va + i * PAGE_SIZE, &old));
	}
	syspte_release(va, pages);
}

static uint64_t physical_address_bits(void)
{
	return cpuid(0x80000000, 0).eax >= 0x80000008 ? (cpuid(0x80000008, 0).eax & 0xFF) : 36;
}

static struct io_mapping *free_slot(void)
{
	for (unsigned i = 0; i < IO_MAPPINGS_MAX; i++)
		if (!io_mappings[i].va)
			return &io_mappings[i];
	return 0;
}

/* The verifier looks at the IRQL before anything else of the call. */
static void require_map_irql(PHYSICAL_ADDRESS pa, SIZE_T bytes)
{
	KIRQL irql = KeGetCurrentIrql();
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_MAP_IO_SPACE_IRQL, irql, (uint64_t)pa.QuadPart, bytes);
}

static PVOID map_io(uint64_t pa, uint64_t bytes, enum protection protection, MEMORY_CACHING_TYPE cache_type)
{
	/* No PTEs for more than the region holds, nor for frames beyond the CPU's physical width. */
	if (!bytes || bytes > SYSTEM_PTE_COUNT * PAGE_SIZE || pa >= BIT(physical_address_bits()) ||
	    bytes - 1 >= BIT(physical_address_bits()) - pa)
		return 0;
	uint64_t pages = span_pages(pa, bytes), first_pfn = pa >> PAGE_SHIFT;
	for (uint64_t i = 0; i < pages; i++) {
		pfn_t pfn = first_pfn + i;
		enum pfn_state state = frame_state(pfn);
		if (state != PFN_NOT_RAM && state != PFN_MDL_PAGES && !frame_lock_count(pfn))
			KeBugCheckEx(MEMORY_MANAGEMENT, MM_LOCK_UNUSABLE_PAGE, pfn, 0, 0);
	}
	struct io_mapping *slot = free_slot();
	if (!slot)
		return 0;
	uint64_t va = system_map_physical(first_pfn << PAGE_SHIFT, pages, protection, cache_type);
	if (!va)
		return 0;
	*slot = (struct io_mapping){.va = va | (pa & PAGE_OFFSET_MASK), .bytes = bytes, .pa = pa};
	io_mapping_count++;
	io_page_count += pages;
	return (PVOID)slot->va;
}

PVOID MmMapIoSpace(PHYSICAL_ADDRESS PhysicalAddress, SIZE_T NumberOfBytes, MEMORY_CACHING_TYPE CacheType)
{
	require_map_irql(PhysicalAddress, NumberOfBytes);
	if (!cache_type_valid(CacheType))
		return 0;
	return map_io((uint64_t)PhysicalAddress.QuadPart, NumberOfBytes, PROT_READ_WRITE, CacheType);
}

/* [DECISION] (§9) exactly one base protection, at most one caching modifier; otherwise NULL. */
PVOID MmMapIoSpaceEx(PHYSICAL_ADDRESS PhysicalAddress, SIZE_T NumberOfBytes, ULONG Protect)
{
	require_map_irql(PhysicalAddress, NumberOfBytes);
	ULONG modifier = Protect & (PAGE_NOCACHE | PAGE_WRITECOMBINE);
	enum protection protection;
	switch (Protect & ~modifier) {
	case PAGE_READONLY:
		protection = PROT_READ;
		break;
	case PAGE_READWRITE:
		protection = PROT_READ_WRITE;
		break;
	case PAGE_EXECUTE: /* x86 has no execute-only pages */
	case PAGE_EXECUTE_READ:
		protection = PROT_READ_EXECUTE;
		break;
	case PAGE_EXECUTE_READWRITE:
		protection = PROT_READ_WRITE_EXECUTE;
		break;
	default:
		return 0;
	}
	MEMORY_CACHING_TYPE cache_type;
	switch (modifier) {
	case 0:
		cache_type = MmCached;
		break;
	case PAGE_NOCACHE:
		cache_type = MmNonCached;
		break;
	case PAGE_WRITECOMBINE:
		cache_type = MmWriteCombined;
		break;
	default:
		return 0;
	}
	return map_io((uint64_t)PhysicalAddress.QuadPart, NumberOfBytes, protection, cache_type);
}

/* [DECISION] (§9) above DISPATCH_LEVEL only, though the verifier's table says above APC_LEVEL. */
void MmUnmapIoSpace(PVOID BaseAddress, SIZE_T NumberOfBytes)
{
	uint64_t va = (uint64_t)BaseAddress;
	KIRQL irql = KeGetCurrentIrql();
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_UNMAP_IO_SPACE_IRQL, irql, va, NumberOfBytes);
	struct io_mapping *m = 0;
	for (unsigned i = 0; i < IO_MAPPINGS_MAX && !m; i++)
		if (va && io_mappings[i].va == va && io_mappings[i].bytes == NumberOfBytes)
			m = &io_mappings[i];
	uint64_t pages = span_pages(va, NumberOfBytes);
	if (!m)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va, pages, 0);
	system_unmap_physical(va & ~PAGE_OFFSET_MASK, pages);
	*m = (struct io_mapping){0};
	io_mapping_count--;
	io_page_count -= pages;
}

static void report_iospace(void)
{
	frame_decimal("iospace_mappings", io_mapping_count);
	frame_decimal("iospace_pages", io_page_count);
}
OUTSTANDING_REPORTER(report_iospace);
