/*
 * MmGetPhysicalAddress and MmIsAddressValid (ddi-spec §3, §4): both walk the live tables through
 * the recursive self-map as NT does. The walker checks canonical form first and each level's P
 * bit before reading the level below, so neither DDI can fault, whatever the address.
 */
#include "ntddk.h"
#include "pagetable.h"

/* [DECISION] 0 for an invalid or non-canonical VA; 1 GiB, 2 MiB and 4 KiB leaves; U/S ignored. */
PHYSICAL_ADDRESS MmGetPhysicalAddress(PVOID BaseAddress)
{
	struct pt_view live = pt_live();
	struct pt_walk walk = pt_walk(&live, (uint64_t)BaseAddress);
	PHYSICAL_ADDRESS pa = {.QuadPart = 0};
	if (walk.stop == PT_LEAF)
		pa.QuadPart = (LONGLONG)pt_leaf_address(&walk, (uint64_t)BaseAddress);
	return pa;
}

/* [DECISION] TRUE when every level is present down to a leaf; RW, NX and U/S are not looked at. */
BOOLEAN MmIsAddressValid(PVOID VirtualAddress)
{
	verifier_require_irql_at_most(DISPATCH_LEVEL); /* [DOC] IRQL <= DISPATCH_LEVEL */
	struct pt_view live = pt_live();
	return pt_walk(&live, (uint64_t)VirtualAddress).stop == PT_LEAF;
}
