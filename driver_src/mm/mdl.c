/*
 * MDLs (ddi-spec §8): allocation, describing nonpaged memory, probe-and-lock, partial MDLs and
 * pages allocated for an MDL. Mapping is in mdl_map.c.
 *
 * MDLs live in nonpaged pool under TAG_MDL, so the host reads them out of guest memory. Every
 * allocated, locked, mapped or page-owning MDL is counted for the per-test leak check.
 */
#include "mdl.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "pagetable.h"
#include "protocol.h"
#include "smp.h"

#define LIVE_MDLS_MAX 4096

NTSTATUS mdl_raised_status;
uint64_t mdl_locked_pages, mdl_mapped_pages;
static uint64_t mdl_allocated_pages;

/* MDLs from IoAllocateMdl not yet given to IoFreeMdl (MmAllocatePagesForMdl's are pool blocks the
 * caller frees with ExFreePool, as on NT). Slots are claimed and the counts kept atomically, as
 * several CPUs may allocate and free MDLs at once. */
static PMDL live_mdls[LIVE_MDLS_MAX];
static uint64_t live_mdl_count;

static void count(uint64_t *counter, int64_t change)
{
	__atomic_add_fetch(counter, (uint64_t)change, __ATOMIC_SEQ_CST);
}

static bool remember_mdl(PMDL mdl)
{
	for (unsigned i = 0; i < LIVE_MDLS_MAX; i++) {
		PMDL empty = NULL;
		if (__atomic_compare_exchange_n(&live_mdls[i], &empty, mdl, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
			count(&live_mdl_count, 1);
			return true;
		}
	}
	return false;
}

static bool forget_mdl(PMDL mdl)
{
	for (unsigned i = 0; i < LIVE_MDLS_MAX; i++) {
		PMDL expected = mdl;
		if (__atomic_compare_exchange_n(&live_mdls[i], &expected, NULL, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
			count(&live_mdl_count, -1);
			return true;
		}
	}
	return false;
}

static void report_outstanding(void)
{
	frame_decimal("mdl_allocated", live_mdl_count);
	frame_decimal("mdl_locked_pages", mdl_locked_pages);
	frame_decimal("mdl_mapped_pages", mdl_mapped_pages);
	frame_decimal("mdl_user_mapped_pages", mdl_user_mapped_pages);
	frame_decimal("mdl_allocated_pages", mdl_allocated_pages);
}
OUTSTANDING_REPORTER(report_outstanding);

/* [DECISION] lengths up to 4 GiB - 4 KiB (the Windows 7+ rule, §8.1). */
#define MDL_LENGTH_MAX 0xFFFFF000u

SIZE_T MmSizeOfMdl(PVOID Base, SIZE_T Length)
{
	return sizeof(MDL) + sizeof(PFN_NUMBER) * (SIZE_T)ADDRESS_AND_SIZE_TO_SPAN_PAGES(Base, Length);
}

/* An MDL from pool for base/length, header initialised, PFN array not filled. */
static PMDL allocate_mdl(PVOID base, SIZE_T length)
{
	PMDL mdl = ExAllocatePoolWithTag(NonPagedPoolNx, MmSizeOfMdl(base, length), TAG_MDL);
	if (!mdl)
		return NULL;
	MmInitializeMdl(mdl, base, length);
	mdl->Process = NULL;
	mdl->MappedSystemVa = NULL;
	mdl->AllocationProcessorNumber = 0;
	mdl->Reserved = 0;
	return mdl;
}

/*
 * [DECISION] No lookaside list: every MDL is sized exactly, so MDL_ALLOCATED_FIXED_SIZE is never
 * set (§8.1 allows flags 0). A zero Length gives NULL, as ReactOS asserts it is not zero.
 */
PMDL IoAllocateMdl(PVOID VirtualAddress, ULONG Length, BOOLEAN SecondaryBuffer, BOOLEAN ChargeQuota, PIRP Irp)
{
	(void)ChargeQuota;
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	if (!Length || Length > MDL_LENGTH_MAX)
		return NULL;
	PMDL mdl = allocate_mdl(VirtualAddress, Length);
	if (!mdl)
		return NULL;
	if (!remember_mdl(mdl)) {
		ExFreePoolWithTag(mdl, TAG_MDL);
		return NULL;
	}
	if (Irp) {
		if (!SecondaryBuffer) {
			Irp->MdlAddress = mdl;
		} else {
			PMDL *link = &Irp->MdlAddress;
			while (*link)
				link = &(*link)->Next;
			*link = mdl;
		}
	}
	return mdl;
}

void MmPrepareMdlForReuse(PMDL Mdl)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	if (Mdl->MdlFlags & MDL_PARTIAL_HAS_BEEN_MAPPED)
		MmUnmapLockedPages(Mdl->MappedSystemVa, Mdl);
}

void IoFreeMdl(PMDL Mdl)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	/* A partial MDL's own mapping is released here; any other mapping must be gone already. */
	if (((Mdl->MdlFlags & MDL_MAPPED_TO_SYSTEM_VA) && !(Mdl->MdlFlags & MDL_PARTIAL)) || mdl_user_mapped(Mdl))
		verifier_violation(VERIFIER_FREE_MAPPED_MDL, (uint64_t)Mdl, (uint16_t)Mdl->MdlFlags, 0);
	MmPrepareMdlForReuse(Mdl);
	forget_mdl(Mdl);
	ExFreePoolWithTag(Mdl, TAG_MDL);
}

static bool on_kernel_stack(uint64_t va)
{
	for (unsigned k = 0; k < cpu_count; k++)
		if (va >= cpus[k].stack_base && va < cpus[k].stack_top)
			return true;
	return false;
}

void MmBuildMdlForNonPagedPool(PMDL MemoryDescriptorList)
{
	PMDL mdl = MemoryDescriptorList;
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	/* [DECISION] ReactOS asserts none of these; the verifier's probe subcode names the misuse. */
	uint16_t bad = (uint16_t)mdl->MdlFlags &
		       (MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL | MDL_PARTIAL);
	if (bad)
		verifier_violation(VERIFIER_PROBE_BAD_FLAGS, (uint64_t)mdl, (uint16_t)mdl->MdlFlags, bad);
	uint64_t va = (uint64_t)mdl->StartVa, pages = MmGetMdlPageCount(mdl);
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	struct pt_view live = pt_live();
	bool io_space = false;
	for (uint64_t i = 0; i < pages; i++, va += PAGE_SIZE) {
		if (on_kernel_stack(va))
			verifier_violation(VERIFIER_BUILD_FROM_STACK, KeGetCurrentIrql(), (uint64_t)mdl,
					   (uint64_t)MmGetMdlVirtualAddress(mdl));
		struct pt_walk walk = pt_walk(&live, va);
		if (walk.stop != PT_LEAF)
			KeBugCheckEx(MEMORY_MANAGEMENT, MM_MDL_NOT_RESIDENT, (uint64_t)mdl, (uint64_t)walk.slot, 0);
		pfns[i] = pt_leaf_address(&walk, va) >> PAGE_SHIFT;
		io_space |= frame_state(pfns[i]) == PFN_NOT_RAM;
	}
	mdl->Process = NULL;
	mdl->MappedSystemVa = MmGetMdlVirtualAddress(mdl);
	mdl->MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL | (io_space ? MDL_IO_SPACE : 0);
}

static void unlock_frames(PPFN_NUMBER pfns, uint64_t count)
{
	for (uint64_t i = 0; i < count; i++)
		frame_unlock(pfns[i]);
}

/*
 * [DECISION] (§8.5, no paging): kernel addresses only (there are no user address spaces), "make
 * resident" is a no-op; a UserMode buffer reaching above MM_USER_PROBE_ADDRESS, a page that is not
 * present or, for a write, not writable fails the probe with STATUS_ACCESS_VIOLATION; pages not in
 * the PFN database are the verifier's 0x6F. On failure
 * the pages locked so far are unlocked again and the MDL is left as it was.
 */
static NTSTATUS probe_and_lock(PMDL mdl, KPROCESSOR_MODE mode, LOCK_OPERATION operation)
{
	uint64_t va = (uint64_t)mdl->StartVa, pages = MmGetMdlPageCount(mdl);
	uint64_t end = (uint64_t)MmGetMdlVirtualAddress(mdl) + mdl->ByteCount;
	if (mode == UserMode && (end > MM_USER_PROBE_ADDRESS || end < va))
		return (NTSTATUS)STATUS_ACCESS_VIOLATION;
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages; i++, va += PAGE_SIZE) {
		struct pt_walk walk = pt_walk(&live, va);
		bool writable = walk.stop == PT_LEAF && (walk.entry & PTE_RW);
		if (walk.stop != PT_LEAF || va <= MM_HIGHEST_USER_ADDRESS ||
		    (operation != IoReadAccess && !writable)) {
			unlock_frames(pfns, i);
			return (NTSTATUS)STATUS_ACCESS_VIOLATION;
		}
		pfn_t pfn = pt_leaf_address(&walk, va) >> PAGE_SHIFT;
		if (frame_state(pfn) == PFN_NOT_RAM)
			verifier_violation(VERIFIER_PROBE_NOT_IN_PFN_DATABASE, (uint64_t)mdl, pfn,
					   frame_stats().highest_pfn);
		frame_lock(pfn);
		pfns[i] = pfn;
	}
	count(&mdl_locked_pages, (int64_t)pages);
	return STATUS_SUCCESS;
}

void MmProbeAndLockPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode, LOCK_OPERATION Operation)
{
	PMDL mdl = MemoryDescriptorList;
	KIRQL irql = KeGetCurrentIrql();
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_PROBE_IRQL, irql, (uint64_t)mdl, AccessMode);
	uint16_t bad = (uint16_t)mdl->MdlFlags & (MDL_PAGES_LOCKED | MDL_SOURCE_IS_NONPAGED_POOL | MDL_PARTIAL |
						  MDL_MAPPED_TO_SYSTEM_VA | MDL_IO_SPACE);
	if (bad)
		verifier_violation(VERIFIER_PROBE_BAD_FLAGS, (uint64_t)mdl, (uint16_t)mdl->MdlFlags, bad);
	mdl_raised_status = probe_and_lock(mdl, AccessMode, Operation);
	if (mdl_raised_status != STATUS_SUCCESS)
		return;
	mdl->Process = NULL;
	mdl->MdlFlags |= MDL_PAGES_LOCKED | (Operation != IoReadAccess ? MDL_WRITE_OPERATION : 0);
}

void MmUnlockPages(PMDL MemoryDescriptorList)
{
	PMDL mdl = MemoryDescriptorList;
	KIRQL irql = KeGetCurrentIrql();
	uint16_t flags = (uint16_t)mdl->MdlFlags;
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_UNLOCK_IRQL, irql, (uint64_t)mdl, 0);
	if (flags & MDL_SOURCE_IS_NONPAGED_POOL)
		verifier_violation(VERIFIER_UNLOCK_NONPAGED, (uint64_t)mdl, flags, 0);
	if (flags & MDL_PARTIAL)
		verifier_violation(VERIFIER_UNLOCK_PARTIAL, (uint64_t)mdl, flags, MDL_PARTIAL);
	if (!(flags & MDL_PAGES_LOCKED))
		verifier_violation(VERIFIER_UNLOCK_NOT_LOCKED, (uint64_t)mdl, flags, 0);
	if (mdl_user_mapped(mdl))
		verifier_violation(VERIFIER_FREE_MAPPED_MDL, (uint64_t)mdl, flags, 0);
	if (flags & MDL_MAPPED_TO_SYSTEM_VA)
		MmUnmapLockedPages(mdl->MappedSystemVa, mdl);
	uint64_t pages = MmGetMdlPageCount(mdl);
	unlock_frames(MmGetMdlPfnArray(mdl), pages);
	count(&mdl_locked_pages, -(int64_t)pages);
	/* [DECISION] MDL_WRITE_OPERATION stays, as in ReactOS (§8.5). */
	mdl->MdlFlags &= (CSHORT) ~(MDL_PAGES_LOCKED | MDL_IO_SPACE);
}

void IoBuildPartialMdl(PMDL SourceMdl, PMDL TargetMdl, PVOID VirtualAddress, ULONG Length)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	uint64_t source_va = (uint64_t)MmGetMdlVirtualAddress(SourceMdl), va = (uint64_t)VirtualAddress;
	uint64_t offset = va - source_va, length = Length;
	if (va < source_va || offset > SourceMdl->ByteCount ||
	    (length ? length > SourceMdl->ByteCount - offset : offset == SourceMdl->ByteCount))
		KeBugCheckEx(INVALID_MDL_RANGE, (uint64_t)SourceMdl, (uint64_t)TargetMdl, va, Length);
	if (!length)
		length = SourceMdl->ByteCount - offset;
	uint64_t pages = ADDRESS_AND_SIZE_TO_SPAN_PAGES(va, length);
	/* [DECISION] TARGET_MDL_TOO_SMALL carries the same parameters as INVALID_MDL_RANGE. A size above
	 * 16 bits cannot be checked: Size holds it truncated (§8.1). */
	uint64_t needed = MmSizeOfMdl(VirtualAddress, length);
	if (needed <= UINT16_MAX && (uint16_t)TargetMdl->Size < needed)
		KeBugCheckEx(TARGET_MDL_TOO_SMALL, (uint64_t)SourceMdl, (uint64_t)TargetMdl, va, Length);
	uint16_t kept = (uint16_t)TargetMdl->MdlFlags & (MDL_ALLOCATED_FIXED_SIZE | MDL_ALLOCATED_MUST_SUCCEED);
	uint16_t inherited = (uint16_t)SourceMdl->MdlFlags &
			     (MDL_IO_PAGE_READ | MDL_SOURCE_IS_NONPAGED_POOL | MDL_MAPPED_TO_SYSTEM_VA | MDL_IO_SPACE);
	MmInitializeMdl(TargetMdl, VirtualAddress, length);
	TargetMdl->MdlFlags = (CSHORT)(kept | inherited | MDL_PARTIAL);
	TargetMdl->Process = SourceMdl->Process;
	TargetMdl->MappedSystemVa = inherited & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL)
					    ? (char *)SourceMdl->MappedSystemVa + offset
					    : NULL;
	uint64_t first = (offset + SourceMdl->ByteOffset) >> PAGE_SHIFT;
	memcpy(MmGetMdlPfnArray(TargetMdl), MmGetMdlPfnArray(SourceMdl) + first, pages * sizeof(PFN_NUMBER));
}

/* Takes one free frame in lowest..highest, from the top down; continues below *next. */
static pfn_t take_frame(pfn_t *next, pfn_t lowest)
{
	for (pfn_t pfn = *next; pfn >= lowest && pfn != PFN_NONE; pfn--) {
		if (frame_state(pfn) == PFN_FREE && frames_alloc_contiguous(1, pfn, pfn, 0, PFN_MDL_PAGES) == pfn) {
			*next = pfn - 1;
			return pfn;
		}
	}
	*next = PFN_NONE;
	return PFN_NONE;
}

/* Fills pfns with up to count frames in lowest..highest, in chunks of chunk pages aligned to chunk
 * (chunk 0: one page at a time, anywhere); returns how many. */
static uint64_t take_frames(PPFN_NUMBER pfns, uint64_t count, pfn_t lowest, pfn_t highest, uint64_t chunk)
{
	uint64_t found = 0;
	if (!chunk) {
		pfn_t next = highest;
		while (found < count) {
			pfn_t pfn = take_frame(&next, lowest);
			if (pfn == PFN_NONE)
				break;
			pfns[found++] = pfn;
		}
		return found;
	}
	while (found < count) {
		pfn_t first = frames_alloc_contiguous(chunk, lowest, highest, chunk, PFN_MDL_PAGES);
		if (first == PFN_NONE)
			break;
		for (uint64_t i = 0; i < chunk; i++)
			pfns[found++] = first + i;
	}
	return found;
}

#define ALLOCATE_FLAGS_SUPPORTED \
	(MM_DONT_ZERO_ALLOCATION | MM_ALLOCATE_FROM_LOCAL_NODE_ONLY | MM_ALLOCATE_FULLY_REQUIRED | \
	 MM_ALLOCATE_NO_WAIT | MM_ALLOCATE_PREFER_CONTIGUOUS | MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS)

static bool power_of_two(uint64_t x)
{
	return x && !(x & (x - 1));
}

/*
 * [DECISION] (§8.6): flags 0x1-0x20 are honoured (NUMA, no-wait and prefer-contiguous have nothing
 * to change here); 0x40, 0x100 and unknown bits give NULL. A non-zero SkipBytes only matters with
 * REQUIRE_CONTIGUOUS_CHUNKS, where it is the chunk size. The MDL is sized for the request; when
 * fewer pages were found ByteCount says so and the unused slots hold MDL_PFN_END.
 */
PMDL MmAllocatePagesForMdlEx(PHYSICAL_ADDRESS LowAddress, PHYSICAL_ADDRESS HighAddress,
			     PHYSICAL_ADDRESS SkipBytes, SIZE_T TotalBytes, MEMORY_CACHING_TYPE CacheType,
			     ULONG Flags)
{
	(void)CacheType;
	KIRQL irql = KeGetCurrentIrql();
	if (irql > DISPATCH_LEVEL)
		verifier_violation(VERIFIER_ALLOCATE_PAGES_IRQL, irql, DISPATCH_LEVEL, 0);
	uint64_t skip = (uint64_t)SkipBytes.QuadPart;
	if ((Flags & ~ALLOCATE_FLAGS_SUPPORTED) || (skip & PAGE_OFFSET_MASK) || !TotalBytes ||
	    TotalBytes > MDL_LENGTH_MAX || LowAddress.QuadPart < 0 || HighAddress.QuadPart < LowAddress.QuadPart)
		return NULL;
	uint64_t pages = BYTES_TO_PAGES((uint64_t)TotalBytes), chunk = 0;
	if (Flags & MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS) {
		chunk = skip ? skip >> PAGE_SHIFT : pages;
		if (skip && (!power_of_two(skip) || TotalBytes % skip))
			return NULL;
	}
	pfn_t lowest = (uint64_t)LowAddress.QuadPart >> PAGE_SHIFT;
	pfn_t highest = (uint64_t)HighAddress.QuadPart >> PAGE_SHIFT;
	if (highest > frame_stats().highest_pfn)
		highest = frame_stats().highest_pfn;
	PMDL mdl = allocate_mdl(NULL, pages << PAGE_SHIFT);
	if (!mdl)
		return NULL;
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	uint64_t found = lowest <= highest ? take_frames(pfns, pages, lowest, highest, chunk) : 0;
	if (!found || (found < pages && (Flags & MM_ALLOCATE_FULLY_REQUIRED))) {
		for (uint64_t i = 0; i < found; i++)
			frame_free(pfns[i], PFN_MDL_PAGES);
		ExFreePoolWithTag(mdl, TAG_MDL);
		return NULL;
	}
	for (uint64_t i = found; i < pages; i++)
		pfns[i] = MDL_PFN_END;
	if (!(Flags & MM_DONT_ZERO_ALLOCATION)) {
		for (uint64_t i = 0; i < found; i++)
			memset(phys_to_virt(pfns[i] << PAGE_SHIFT), 0, PAGE_SIZE);
	}
	mdl->ByteCount = (ULONG)(found << PAGE_SHIFT);
	mdl->MdlFlags |= MDL_PAGES_LOCKED;
	count(&mdl_allocated_pages, (int64_t)found);
	return mdl;
}

PMDL MmAllocatePagesForMdl(PHYSICAL_ADDRESS LowAddress, PHYSICAL_ADDRESS HighAddress, PHYSICAL_ADDRESS SkipBytes,
			   SIZE_T TotalBytes)
{
	return MmAllocatePagesForMdlEx(LowAddress, HighAddress, SkipBytes, TotalBytes, MmCached, 0);
}

void MmFreePagesFromMdl(PMDL MemoryDescriptorList)
{
	PMDL mdl = MemoryDescriptorList;
	verifier_require_irql_at_most(DISPATCH_LEVEL);
	if (mdl_user_mapped(mdl))
		verifier_violation(VERIFIER_FREE_MAPPED_MDL, (uint64_t)mdl, (uint16_t)mdl->MdlFlags, 0);
	/* Windows 7+: a mapping from MmGetSystemAddressForMdlSafe goes with the pages. */
	if (mdl->MdlFlags & MDL_MAPPED_TO_SYSTEM_VA)
		MmUnmapLockedPages(mdl->MappedSystemVa, mdl);
	PPFN_NUMBER pfns = MmGetMdlPfnArray(mdl);
	uint64_t pages = MmGetMdlPageCount(mdl);
	for (uint64_t i = 0; i < pages && pfns[i] != MDL_PFN_END; i++) {
		if (frame_state(pfns[i]) != PFN_MDL_PAGES)
			KeBugCheckEx(MEMORY_MANAGEMENT, MM_MDL_FOREIGN_PAGE, (uint64_t)mdl, (uint64_t)&pfns[i], pfns[i]);
		frame_free(pfns[i], PFN_MDL_PAGES);
		pfns[i] = MDL_PFN_END;
		count(&mdl_allocated_pages, -1);
	}
	mdl->MdlFlags &= (CSHORT)~MDL_PAGES_LOCKED;
}
