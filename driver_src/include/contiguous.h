/*
 * Physically contiguous memory (ddi-spec §10): frames from frames_alloc_contiguous(), mapped in
 * system PTEs with the caching type asked for.
 */
#pragma once
#include <stdint.h>
#include "frames.h"
#include "iospace.h"

/* BAD_POOL_CALLER P1: MmFreeContiguousMemory of an address no allocation starts at (P2 it). */
#define POOL_BAD_CONTIGUOUS_FREE 0x60
/* DRIVER_VERIFIER_DETECTED_VIOLATION P1 of the DDI rule IrqlMmDispatch (P2 the rule's name). */
#define VERIFIER_RULE_IRQL_MM_DISPATCH 0x0002001A

PVOID MmAllocateContiguousMemory(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS HighestAcceptableAddress);
PVOID MmAllocateContiguousMemorySpecifyCache(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS LowestAcceptableAddress,
					     PHYSICAL_ADDRESS HighestAcceptableAddress,
					     PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType);
/* NODE_REQUIREMENT: a NUMA node number, or any node. */
typedef ULONG NODE_REQUIREMENT;
#define MM_ANY_NODE_OK 0x80000000u
PVOID MmAllocateContiguousMemorySpecifyCacheNode(SIZE_T NumberOfBytes, PHYSICAL_ADDRESS LowestAcceptableAddress,
						 PHYSICAL_ADDRESS HighestAcceptableAddress,
						 PHYSICAL_ADDRESS BoundaryAddressMultiple, MEMORY_CACHING_TYPE CacheType,
						 NODE_REQUIREMENT PreferredNode);
void MmFreeContiguousMemory(PVOID BaseAddress);
void MmFreeContiguousMemorySpecifyCache(PVOID BaseAddress, SIZE_T NumberOfBytes, MEMORY_CACHING_TYPE CacheType);

/* The VA the contiguous allocation holding pfn maps it at, or 0 when no allocation holds it. */
uint64_t contiguous_virtual_of(pfn_t pfn);
