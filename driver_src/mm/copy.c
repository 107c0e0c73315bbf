/*
 * MmCopyMemory (ddi-spec §6): copies from a physical or a virtual source without ever faulting on
 * the source. Physical pages are reached through the copying CPU's own copy PTE in hyperspace
 * (layout.h), mapped for a chunk and cleared after it, as NT's per-CPU hyperspace mappings are: no
 * other CPU ever uses the VA, so the flush stays on this CPU. It stays out of the system-PTE
 * region, which starts empty. Virtual sources are walked first, then copied through copy_nofault,
 * so a mapping that vanishes mid-copy ends the copy instead of the system.
 *
 * [DECISION] Every failure returns STATUS_INVALID_ADDRESS with the bytes copied before the failing
 * chunk, partial or not; STATUS_PARTIAL_COPY is never returned (the docs promise only "an error
 * status", and one code keeps callers' checks simple).
 */
#include "copy.h"
#include "bugcodes.h"
#include "frames.h"
#include "irql.h"
#include "kstring.h"
#include "layout.h"
#include "nofault.h"
#include "ntddk.h"
#include "pagetable.h"
#include "smp.h"

/* Every CPU's window lies in one page table, built at boot. */
_Static_assert(LEVEL_INDEX(COPY_WINDOW_VA(0), 2) == LEVEL_INDEX(COPY_WINDOW_VA(MAX_CPUS - 1), 2), "copy windows");

void copy_init(void)
{
	struct pt_view live = pt_live();
	if (!pt_prepare(&live, COPY_WINDOW_VA(0), 1))
		KeBugCheckEx(INSTALL_MORE_MEMORY, COPY_WINDOW_VA(0), 1, 0, 0);
}

uint64_t copy_pte_va(void)
{
	return COPY_WINDOW_VA(this_cpu()->index);
}

static bool is_ram(uint64_t pa)
{
	return frame_state(pa >> PAGE_SHIFT) != PFN_NOT_RAM;
}

/*
 * Maps the page of pa read-only, cached and not global (the entry is this CPU's alone), copies
 * bytes of it, and clears the PTE again. The IRQL is raised to DISPATCH_LEVEL meanwhile, as the PTE
 * belongs to the CPU.
 */
static void copy_physical_chunk(uint8_t *target, uint64_t pa, uint64_t bytes)
{
	KIRQL old;
	KeRaiseIrql(DISPATCH_LEVEL, &old);
	struct pt_view live = pt_live_private();
	uint64_t copy_va = copy_pte_va();
	uint64_t leaf = pte_kernel_leaf(pa & ~PAGE_OFFSET_MASK, 1, PROT_READ) & ~PTE_G;
	tlb_flush(pt_set(&live, copy_va, 1, leaf));
	memcpy(target, (const uint8_t *)copy_va + (pa & PAGE_OFFSET_MASK), bytes);
	uint64_t old_entry;
	tlb_flush(pt_clear(&live, copy_va, &old_entry));
	KeLowerIrql(old);
}

/* Bytes copied from the chunk at va; fewer than asked when it is not mapped RAM or faults. */
static uint64_t copy_virtual_chunk(uint8_t *target, uint64_t va, uint64_t bytes)
{
	struct pt_view live = pt_live();
	struct pt_walk walk = pt_walk(&live, va);
	if (walk.stop != PT_LEAF || !is_ram(pt_leaf_address(&walk, va)))
		return 0;
	return bytes - copy_nofault(target, (const void *)va, bytes);
}

NTSTATUS MmCopyMemory(PVOID TargetAddress, MM_COPY_ADDRESS SourceAddress, SIZE_T NumberOfBytes, ULONG Flags,
		      PSIZE_T NumberOfBytesTransferred)
{
	if (!NumberOfBytesTransferred)
		return STATUS_INVALID_PARAMETER_5;
	*NumberOfBytesTransferred = 0;
	verifier_require_irql_at_most(APC_LEVEL);
	if (Flags != MM_COPY_MEMORY_PHYSICAL && Flags != MM_COPY_MEMORY_VIRTUAL)
		return STATUS_INVALID_PARAMETER_4;
	bool physical = Flags == MM_COPY_MEMORY_PHYSICAL;
	uint64_t source = physical ? (uint64_t)SourceAddress.PhysicalAddress.QuadPart
				   : (uint64_t)SourceAddress.VirtualAddress;
	uint8_t *target = TargetAddress;
	uint64_t done = 0;
	while (done < NumberOfBytes) {
		uint64_t at = source + done;
		uint64_t chunk = PAGE_SIZE - (at & PAGE_OFFSET_MASK);
		if (chunk > NumberOfBytes - done)
			chunk = NumberOfBytes - done;
		uint64_t copied;
		if (physical) {
			copied = is_ram(at) ? chunk : 0;
			if (copied)
				copy_physical_chunk(target + done, at, chunk);
		} else {
			copied = copy_virtual_chunk(target + done, at, chunk);
		}
		done += copied;
		*NumberOfBytesTransferred = done;
		if (copied < chunk)
			return STATUS_INVALID_ADDRESS;
	}
	return STATUS_SUCCESS;
}
