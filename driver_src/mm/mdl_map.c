/*
 * Mapping MDLs into system space (ddi-spec §8.7): MmMapLockedPagesSpecifyCache,
 * MmUnmapLockedPages, MmGetSystemAddressForMdlSafe. Mappings take system PTEs (syspte.h).
 */
#include "mdl.h"
#include "frames.h"
#include "pagetable.h"
#include "syspte.h"
#include "usermode.h"

#define PRIORITY_FLAGS (MdlMappingNoWrite | MdlMappingNoExecute)

/* §1.2 and §2.5 [DECISION]: the PTE bits of each caching type (PAT: PWT = WC, PWT|PCD = UC). */
bool mdl_cache_bits(MEMORY_CACHING_TYPE type, uint64_t *bits)
{
	switch (type) {
	case MmCached:
	case MmHardwareCoherentCached:
		*bits = 0;
		return true;
	case MmNonCached:
	case MmNonCachedUnordered:
		*bits = PTE_PWT | PTE_PCD;
		return true;
	case MmWriteCombined:
	case MmUSWCCached:
		*bits = PTE_PWT;
		return true;
	default:
		return false;
	}
}

/*
 * [DECISION] (§8.7): Low priority fails when fewer than 1/16 of the system PTEs would stay free,
 * Normal when fewer than 1/64, High only when there are none.
 */
static bool priority_allows(ULONG priority, uint64_t pages)
{
	uint64_t free = SYSTEM_PTE_COUNT - syspte_in_use();
	uint64_t level = priority & ~PRIORITY_FLAGS;
	uint64_t reserve = level >= HighPagePriority ? 0 : level >= NormalPagePriority ? SYSTEM_PTE_COUNT / 64
										       : SYSTEM_PTE_COUNT / 16;
	return pages <= free && free - pages >= reserve;
}

void mdl_check_mappable_pages(PMDL mdl)
{
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	uint64_t pages = MmGetMdlPageCount(mdl);
	for (uint64_t i = 0; i < pages && pfns[i] != MDL_PFN_END; i++) {
		enum pfn_state state = frame_state(pfns[i]);
		if (state == PFN_NOT_RAM) {
			if (!(mdl->MdlFlags & MDL_IO_SPACE))
				verifier_violation(VERIFIER_MAP_NOT_RAM_WITHOUT_IO_SPACE, (uint64_t)mdl,
						   (uint64_t)&pfns[i], pfns[i]);
		} else if (state != PFN_MDL_PAGES && !frame_lock_count(pfns[i])) {
			verifier_violation(VERIFIER_MAP_UNLOCKED_PAGE, (uint64_t)mdl, pages, pfns[i]);
		}
	}
}

/*
 * User mappings (§8.7): views in the one user address space (usermode.h), recorded here since
 * an MDL may have any number of them and NT keeps none in the MDL itself (no flag, no
 * MappedSystemVa). [DECISION] a full table is "out of address space", like the views running out.
 */
#define USER_MAPPINGS_MAX 64

struct user_mapping {
	uint64_t va;     /* page aligned; 0 marks a free slot */
	uint64_t pages;  /* of the view */
	uint64_t mapped; /* the leading pages with a PFN (the array may end early) */
	PMDL mdl;
};

static struct user_mapping user_mappings[USER_MAPPINGS_MAX];
uint64_t mdl_user_mapped_pages;

/* The slot of mdl's user mapping at va; va 0 finds a free slot. */
static struct user_mapping *user_mapping_of(uint64_t va, PMDL mdl)
{
	for (unsigned i = 0; i < USER_MAPPINGS_MAX; i++)
		if (user_mappings[i].va == va && user_mappings[i].mdl == mdl)
			return &user_mappings[i];
	return 0;
}

bool mdl_user_mapped(PMDL mdl)
{
	for (unsigned i = 0; i < USER_MAPPINGS_MAX; i++)
		if (user_mappings[i].va && user_mappings[i].mdl == mdl)
			return true;
	return false;
}

/*
 * [DECISION] (§8.7) AccessMode UserMode: the MDL must be locked, partial or nonpaged-built
 * (0xC4 0xB3 otherwise); it may be mapped to system space and to user space any number of times.
 * Failures "raise" (mdl_raised_status, NULL returned): an unknown caching type
 * STATUS_INVALID_PARAMETER_3; no room, or an MDL spanning no page (NULL in kernel mode),
 * STATUS_INSUFFICIENT_RESOURCES; a RequestedAddress (rounded down to its page) outside the user
 * views or overlapping a live view STATUS_CONFLICTING_ADDRESSES.
 * The pages are U/S, always NX (when the CPU has NX), read-only with MdlMappingNoWrite, cached as
 * asked; BugCheckOnFailure does not apply.
 */
static PVOID map_user(PMDL mdl, MEMORY_CACHING_TYPE cache_type, uint64_t requested, ULONG priority)
{
	uint16_t flags = (uint16_t)mdl->MdlFlags;
	if (!(flags & (MDL_PAGES_LOCKED | MDL_PARTIAL | MDL_SOURCE_IS_NONPAGED_POOL)))
		verifier_violation(VERIFIER_MAP_MISSING_FLAGS, (uint64_t)mdl, flags, MDL_PAGES_LOCKED);
	if (!(flags & MDL_SOURCE_IS_NONPAGED_POOL))
		mdl_check_mappable_pages(mdl);
	uint64_t pages = MmGetMdlPageCount(mdl), cache;
	if (!mdl_cache_bits(cache_type, &cache)) {
		mdl_raised_status = STATUS_INVALID_PARAMETER_3;
		return NULL;
	}
	struct user_mapping *slot = user_mapping_of(0, 0);
	uint64_t va = 0;
	if (requested && pages) {
		va = user_view_reserve_at((uint64_t)PAGE_ALIGN(requested), pages);
		if (!va) {
			mdl_raised_status = STATUS_CONFLICTING_ADDRESSES;
			return NULL;
		}
	} else if (slot) {
		va = user_view_reserve(pages);
	}
	if (!slot || !va) {
		if (va)
			user_view_release(va, pages);
		mdl_raised_status = STATUS_INSUFFICIENT_RESOURCES;
		return NULL;
	}
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	bool writable = !(priority & MdlMappingNoWrite);
	uint64_t mapped = 0;
	for (; mapped < pages && pfns[mapped] != MDL_PFN_END; mapped++)
		user_map_page(va + mapped * PAGE_SIZE, pte_user_leaf(pfns[mapped] << PAGE_SHIFT, writable) | cache);
	*slot = (struct user_mapping){.va = va, .pages = pages, .mapped = mapped, .mdl = mdl};
	mdl_user_mapped_pages += pages;
	return (PVOID)(va + mdl->ByteOffset);
}

/* [DECISION] (§8.7): the address must be one this MDL's user mapping returned (page-wise), else 0xC4 0xB9. */
static void unmap_user(uint64_t va, PMDL mdl)
{
	KIRQL irql = KeGetCurrentIrql();
	if (irql > APC_LEVEL)
		verifier_violation(VERIFIER_UNMAP_USER_IRQL, irql, va, (uint64_t)mdl);
	struct user_mapping *m = PAGE_ALIGN(va) ? user_mapping_of((uint64_t)PAGE_ALIGN(va), mdl) : 0;
	if (!m)
		verifier_violation(VERIFIER_UNMAP_BAD_USER_ADDRESS, va, (uint64_t)mdl, 0);
	for (uint64_t i = 0; i < m->mapped; i++)
		user_unmap_page(m->va + i * PAGE_SIZE);
	user_view_release(m->va, m->pages);
	mdl_user_mapped_pages -= m->pages;
	*m = (struct user_mapping){0};
}

/*
 * Kernel mappings are always NX (MdlMappingNoExecute is a no-op); MdlMappingNoWrite clears RW.
 * BugCheckOnFailure TRUE without MDL_MAPPING_CAN_FAIL bugchecks NO_MORE_SYSTEM_PTES when the
 * mapping fails (the verifier's 0x82, which would fire on every such call, is not raised, so that
 * §8.7 test 5 can see 0x3F).
 */
PVOID MmMapLockedPagesSpecifyCache(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode,
				   MEMORY_CACHING_TYPE CacheType, PVOID RequestedAddress, ULONG BugCheckOnFailure,
				   ULONG Priority)
{
	PMDL mdl = MemoryDescriptorList;
	KIRQL irql = KeGetCurrentIrql();
	mdl_raised_status = STATUS_SUCCESS;
	if (AccessMode != KernelMode) {
		if (irql > APC_LEVEL)
			verifier_violation(VERIFIER_MAP_USER_IRQL, irql, (uint64_t)mdl, AccessMode);
		return map_user(mdl, CacheType, (uint64_t)RequestedAddress, Priority);
	}
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_MAP_KERNEL_IRQL, irql, (uint64_t)mdl, AccessMode);
	uint16_t flags = (uint16_t)mdl->MdlFlags;
	uint16_t bad = flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL | MDL_PARTIAL_HAS_BEEN_MAPPED);
	if (bad)
		verifier_violation(VERIFIER_MAP_BAD_FLAGS, (uint64_t)mdl, flags, bad);
	if (!(flags & (MDL_PAGES_LOCKED | MDL_PARTIAL)))
		verifier_violation(VERIFIER_MAP_MISSING_FLAGS, (uint64_t)mdl, flags, MDL_PAGES_LOCKED);
	uint64_t pages = MmGetMdlPageCount(mdl), cache;
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	mdl_check_mappable_pages(mdl);
	if (!mdl_cache_bits(CacheType, &cache) || !pages)
		return NULL;
	uint64_t base = priority_allows(Priority, pages) ? syspte_reserve(pages) : 0;
	if (!base) {
		if (BugCheckOnFailure && !(flags & MDL_MAPPING_CAN_FAIL))
			KeBugCheckEx(NO_MORE_SYSTEM_PTES, 0, pages, SYSTEM_PTE_COUNT - syspte_in_use(), SYSTEM_PTE_COUNT);
		return NULL;
	}
	enum protection protection = (Priority & MdlMappingNoWrite) ? PROT_READ : PROT_READ_WRITE;
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages && pfns[i] != MDL_PFN_END; i++) {
		uint64_t leaf = pte_kernel_leaf(pfns[i] << PAGE_SHIFT, 1, protection) | cache;
		tlb_flush(pt_set(&live, base + i * PAGE_SIZE, 1, leaf));
	}
	__atomic_add_fetch(&mdl_mapped_pages, pages, __ATOMIC_SEQ_CST);
	mdl->MappedSystemVa = (PVOID)(base + mdl->ByteOffset);
	mdl->MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA | (flags & MDL_PARTIAL ? MDL_PARTIAL_HAS_BEEN_MAPPED : 0);
	return mdl->MappedSystemVa;
}

/*
 * [DECISION] (§8.7): a user address (at most MM_HIGHEST_USER_ADDRESS) is a user unmap; for a
 * system one, an MDL that is not mapped is SYSTEM_PTE_MISUSE 0x06, a BaseAddress in
 * another page than MappedSystemVa 0x03; a partial MDL only unmaps its own mapping (0xB5 for
 * one it inherited from its source).
 */
void MmUnmapLockedPages(PVOID BaseAddress, PMDL MemoryDescriptorList)
{
	PMDL mdl = MemoryDescriptorList;
	uint64_t va = (uint64_t)BaseAddress, pages = MmGetMdlPageCount(mdl);
	uint16_t flags = (uint16_t)mdl->MdlFlags;
	KIRQL irql = KeGetCurrentIrql();
	if (va <= MM_HIGHEST_USER_ADDRESS) {
		unmap_user(va, mdl);
		return;
	}
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_UNMAP_KERNEL_IRQL, irql, va, (uint64_t)mdl);
	if (!(flags & MDL_MAPPED_TO_SYSTEM_VA))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_NEVER_MAPPED, (uint64_t)mdl, va, pages);
	if ((flags & MDL_PARTIAL) && !(flags & MDL_PARTIAL_HAS_BEEN_MAPPED))
		verifier_violation(VERIFIER_UNMAP_PARTIAL, (uint64_t)mdl, flags, MDL_PARTIAL);
	uint64_t expected = (uint64_t)PAGE_ALIGN(mdl->MappedSystemVa);
	if ((uint64_t)PAGE_ALIGN(va) != expected)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, PTE_MISUSE_WRONG_ADDRESS, 0, expected, va);
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t page = expected + i * PAGE_SIZE, old;
		if (*syspte_entry(page) & PTE_P)
			tlb_flush(pt_clear(&live, page, &old));
	}
	syspte_release(expected, pages);
	__atomic_sub_fetch(&mdl_mapped_pages, pages, __ATOMIC_SEQ_CST);
	mdl->MdlFlags &= (CSHORT) ~(MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED | MDL_FREE_EXTRA_PTES);
}

/* Obsolete: with the verifier always on, every call is its 0x81. */
PVOID MmMapLockedPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode)
{
	(void)AccessMode;
	verifier_violation(VERIFIER_MAP_LOCKED_PAGES_OBSOLETE, (uint64_t)MemoryDescriptorList,
			   (uint16_t)MemoryDescriptorList->MdlFlags, 0);
}

PVOID MmGetSystemAddressForMdlSafe(PMDL Mdl, ULONG Priority)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	if (Mdl->MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL))
		return Mdl->MappedSystemVa;
	return MmMapLockedPagesSpecifyCache(Mdl, KernelMode, MmCached, NULL, FALSE, Priority);
}
