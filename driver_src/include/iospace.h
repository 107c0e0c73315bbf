/*
 * I/O space (ddi-spec §9): MmMapIoSpace, MmMapIoSpaceEx and MmUnmapIoSpace map physical ranges
 * into system PTEs with the caching type asked for (§2.5), and keep a table of live mappings so
 * an unmap that does not match one exactly stops the kernel.
 */
#pragma once
#include <stdint.h>
#include "ntddk.h"
#include "pagetable.h"

/* SYSTEM_PTE_MISUSE P1: unmap of an I/O mapping not in the table (P2 the VA, P3 its page span). */
#define PTE_MISUSE_UNKNOWN_IO_MAPPING 0x400
/* DRIVER_VERIFIER_DETECTED_VIOLATION P1s: map above DISPATCH (P2 IRQL, P3 PA, P4 bytes) and
 * unmap above DISPATCH (P2 IRQL, P3 VA, P4 bytes). */
#define VERIFIER_MAP_IO_SPACE_IRQL 0x73
#define VERIFIER_UNMAP_IO_SPACE_IRQL 0x7B

PVOID MmMapIoSpace(PHYSICAL_ADDRESS PhysicalAddress, SIZE_T NumberOfBytes, MEMORY_CACHING_TYPE CacheType);
PVOID MmMapIoSpaceEx(PHYSICAL_ADDRESS PhysicalAddress, SIZE_T NumberOfBytes, ULONG Protect);
void MmUnmapIoSpace(PVOID BaseAddress, SIZE_T NumberOfBytes);
/* mm/virtual_for_physical.c (ddi-spec §5) */
PVOID MmGetVirtualForPhysical(PHYSICAL_ADDRESS PhysicalAddress);

/* Whether CacheType is one of the six caching types (§1.2); the others make the DDIs fail. */
bool cache_type_valid(MEMORY_CACHING_TYPE CacheType);
/*
 * pages consecutive frames from first_pa (page aligned) in fresh system PTEs, each leaf built by
 * pte_kernel_leaf with the §2.5 bits of cache_type; no table entry, no RAM check (the contiguous
 * allocator maps its own frames with it). The VA of the first page, or 0 when no PTEs are left.
 */
uint64_t system_map_physical(uint64_t first_pa, uint64_t pages, enum protection protection,
			     MEMORY_CACHING_TYPE cache_type);
/* Clears and flushes the leaves of a system_map_physical() range and releases its PTEs. */
void system_unmap_physical(uint64_t va, uint64_t pages);
