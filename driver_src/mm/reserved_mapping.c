/*
 * Reserved mappings (ddi-spec §7), over the one system-PTE allocator. The header PTEs of
 * reserved_mapping.h are the only record of a reservation: every call finds its reservation
 * from the address it is given, as NT does, and checks the header before touching anything.
 */
#include "reserved_mapping.h"
#include "bugcodes.h"
#include "pagetable.h"
#include "protocol.h"
#include "syspte.h"

#define FIELD_MASK 0xFFFFFFFFull

/* Updated atomically: several CPUs may map and unmap at once (their reservations are their own). */
static uint64_t reservations, mapped_pages;

static uint64_t encode_field(uint64_t value)
{
	return value << RESERVED_MAPPING_FIELD_SHIFT;
}

/* The value a header PTE holds, or 0 when it is not in header form (present, or low bits used). */
static uint64_t decode_field(uint64_t pte)
{
	if (pte & (BIT(RESERVED_MAPPING_FIELD_SHIFT) - 1))
		return 0;
	return pte >> RESERVED_MAPPING_FIELD_SHIFT & FIELD_MASK;
}

static uint64_t encode_tag(ULONG tag)
{
	return encode_field((uint64_t)tag | 1);
}

/*
 * The 4 KiB PTE of va as the caller's address makes us look for it. The walker reads it without
 * faulting, also where no table exists (outside the system-PTE region, or in a part of it no
 * reservation reached); anything that is not a 4 KiB PTE reads as 0, i.e. "no reservation here".
 */
static uint64_t pte_of(uint64_t va)
{
	struct pt_view live = pt_live();
	struct pt_walk walk = pt_walk(&live, va);
	return walk.level == 1 && walk.stop != PT_NON_CANONICAL ? walk.entry : 0;
}

struct reservation {
	uint64_t base;    /* first data page */
	uint64_t pages;   /* N: decoded size - 2, or 0 when the size PTE is not a valid size */
	uint64_t tag_pte; /* raw tag PTE */
};

static struct reservation reservation_at(uint64_t address)
{
	struct reservation r = {.base = address & ~PAGE_OFFSET_MASK};
	r.tag_pte = pte_of(r.base - PAGE_SIZE);
	uint64_t size = decode_field(pte_of(r.base - 2 * PAGE_SIZE));
	if (size >= 3 && syspte_contains(r.base - 2 * PAGE_SIZE, size))
		r.pages = size - RESERVED_MAPPING_HEADER_PTES;
	return r;
}

/* [DECISION §7.5] the decoded owner tag (Tag | 1 as stored), 0 when the PTE is no tag PTE. */
static uint64_t owner_tag(const struct reservation *r)
{
	return decode_field(r->tag_pte);
}

/*
 * The reservation at address, checked as every DDI of the family checks it: the tag first (0xDA
 * not_owner: address, tag, owner tag), then the size (0xDA empty: address, tag, the DDI's caller).
 */
static struct reservation owned_reservation(uint64_t address, ULONG tag, uint64_t not_owner, uint64_t empty,
					    uint64_t caller)
{
	struct reservation r = reservation_at(address);
	if (r.tag_pte != encode_tag(tag))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, not_owner, address, tag, owner_tag(&r));
	if (!r.pages)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, empty, address, tag, caller);
	return r;
}

PVOID MmAllocateMappingAddressEx(SIZE_T NumberOfBytes, ULONG PoolTag, ULONG Flags)
{
	verifier_require_irql_at_most(APC_LEVEL);
	if (PoolTag == 0 || (Flags & ~MM_MAPPING_ADDRESS_DIVISIBLE))
		return NULL;
	uint64_t pages = (NumberOfBytes >> PAGE_SHIFT) + !!(NumberOfBytes & PAGE_OFFSET_MASK);
	if (pages == 0)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_ZERO_MAPPINGS, 0, PoolTag,
			     (uint64_t)__builtin_return_address(0));
	if (pages > SYSTEM_PTE_COUNT)
		return NULL;
	uint64_t first = syspte_reserve(pages + RESERVED_MAPPING_HEADER_PTES);
	if (!first)
		return NULL;
	/* Non-present to non-present: nothing to flush. */
	*syspte_entry(first) = encode_field(pages + RESERVED_MAPPING_HEADER_PTES);
	*syspte_entry(first + PAGE_SIZE) = encode_tag(PoolTag);
	__atomic_add_fetch(&reservations, 1, __ATOMIC_SEQ_CST);
	return (PVOID)(first + RESERVED_MAPPING_HEADER_PTES * PAGE_SIZE);
}

PVOID MmAllocateMappingAddress(SIZE_T NumberOfBytes, ULONG PoolTag)
{
	return MmAllocateMappingAddressEx(NumberOfBytes, PoolTag, 0);
}

void MmFreeMappingAddress(PVOID BaseAddress, ULONG PoolTag)
{
	verifier_require_irql_at_most(APC_LEVEL);
	struct reservation r = owned_reservation((uint64_t)BaseAddress, PoolTag, PTE_MISUSE_FREE_NOT_OWNER,
						 PTE_MISUSE_FREE_EMPTY, (uint64_t)__builtin_return_address(0));
	for (uint64_t i = 0; i < r.pages; i++) {
		volatile uint64_t *pte = syspte_entry(r.base + i * PAGE_SIZE);
		if (*pte)
			KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_FREE_STILL_MAPPED, (uint64_t)pte, PoolTag, r.pages);
	}
	/* No data PTE was present, so no TLB entry can exist; the allocator zeroes the headers. */
	syspte_release(r.base - RESERVED_MAPPING_HEADER_PTES * PAGE_SIZE, r.pages + RESERVED_MAPPING_HEADER_PTES);
	__atomic_sub_fetch(&reservations, 1, __ATOMIC_SEQ_CST);
}

/* Pages of the MDL that carry a frame: ReactOS ends a short PFN array with MDL_PFN_END. */
static uint64_t frames_in(PMDL mdl, uint64_t pages)
{
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	uint64_t n = 0;
	while (n < pages && pfns[n] != MDL_PFN_END)
		n++;
	return n;
}

#define MAP_FORBIDDEN_FLAGS (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL | MDL_PARTIAL_HAS_BEEN_MAPPED)
#define MAP_REQUIRED_FLAGS (MDL_PAGES_LOCKED | MDL_PARTIAL)

PVOID MmMapLockedPagesWithReservedMapping(PVOID MappingAddress, ULONG PoolTag, PMDL MemoryDescriptorList,
					  MEMORY_CACHING_TYPE CacheType)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	PMDL mdl = MemoryDescriptorList;
	uint64_t address = (uint64_t)MappingAddress;
	struct reservation r = owned_reservation(address, PoolTag, PTE_MISUSE_MAP_NOT_OWNER, PTE_MISUSE_MAP_INVALID_RANGE,
						 (uint64_t)__builtin_return_address(0));
	uint64_t pages = MmGetMdlPageCount(mdl), cache;
	if (pages > r.pages || !mdl_cache_bits(CacheType, &cache))
		return NULL;
	uint16_t flags = (uint16_t)mdl->MdlFlags;
	if (flags & MAP_FORBIDDEN_FLAGS)
		verifier_violation(VERIFIER_MAP_BAD_FLAGS, (uint64_t)mdl, flags, flags & MAP_FORBIDDEN_FLAGS);
	if (!(flags & MAP_REQUIRED_FLAGS))
		verifier_violation(VERIFIER_MAP_MISSING_FLAGS, (uint64_t)mdl, flags, MAP_REQUIRED_FLAGS);
	mdl_check_mappable_pages(mdl);
	uint64_t last = (uint64_t)syspte_entry(r.base + (pages ? pages - 1 : 0) * PAGE_SIZE);
	for (uint64_t i = 0; i < pages; i++) {
		volatile uint64_t *pte = syspte_entry(r.base + i * PAGE_SIZE);
		if (*pte)
			KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_MAP_NOT_EMPTY, address, (uint64_t)pte, last);
	}
	/*
	 * Not present to present: no INVLPG is needed (a CPU caches no not-present translation), and
	 * none is done, so a flush missing from MmUnmapReservedMapping cannot hide behind this one.
	 */
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	uint64_t mapped = frames_in(mdl, pages);
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < mapped; i++) {
		uint64_t leaf = pte_kernel_leaf(pfns[i] << PAGE_SHIFT, 1, PROT_READ_WRITE) | cache;
		tlb_flush_not_needed(pt_set(&live, r.base + i * PAGE_SIZE, 1, leaf));
	}
	__atomic_add_fetch(&mapped_pages, mapped, __ATOMIC_SEQ_CST);
	/* [WIN-OBS Win8+] the address is taken 16-byte aligned; MappedSystemVa lacks the byte offset. */
	uint64_t start = address & ~15ull;
	mdl->MappedSystemVa = (PVOID)start;
	mdl->MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA;
	if (flags & MDL_PARTIAL)
		mdl->MdlFlags |= MDL_PARTIAL_HAS_BEEN_MAPPED;
	return (PVOID)(start + mdl->ByteOffset);
}

void MmUnmapReservedMapping(PVOID BaseAddress, ULONG PoolTag, PMDL MemoryDescriptorList)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	PMDL mdl = MemoryDescriptorList;
	uint64_t address = (uint64_t)BaseAddress;
	struct reservation r = owned_reservation(address, PoolTag, PTE_MISUSE_UNMAP_NOT_OWNER, PTE_MISUSE_UNMAP_EMPTY,
						 (uint64_t)__builtin_return_address(0));
	uint64_t pages = MmGetMdlPageCount(mdl);
	if (pages > r.pages)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNMAP_TOO_MANY, address, r.pages, pages);
	uint64_t mapped = frames_in(mdl, pages);
	for (uint64_t i = 0; i < r.pages; i++) {
		uint64_t pte = *syspte_entry(r.base + i * PAGE_SIZE);
		if (i < mapped && !(pte & PTE_P))
			KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNMAP_NOT_MAPPED, address, PoolTag, pages);
		if (i >= mapped && pte)
			KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNMAP_NOT_ENTIRE, address, PoolTag, pages);
	}
	if (!(mdl->MdlFlags & MDL_MAPPED_TO_SYSTEM_VA))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_NEVER_MAPPED, (uint64_t)mdl, address, pages);
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < mapped; i++) {
		uint64_t old;
		tlb_flush(pt_clear(&live, r.base + i * PAGE_SIZE, &old));
	}
	__atomic_sub_fetch(&mapped_pages, mapped, __ATOMIC_SEQ_CST);
	/* MappedSystemVa stays as it was (stale), as in ReactOS. */
	mdl->MdlFlags &= ~(MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED | MDL_FREE_EXTRA_PTES);
}

static void report_reserved_mappings(void)
{
	frame_decimal("reserved_mapping_reservations", reservations);
	frame_decimal("reserved_mapping_mapped_pages", mapped_pages);
}
OUTSTANDING_REPORTER(report_reserved_mappings);
