/*
 * Reserved mappings (ddi-spec §7): a driver reserves a run of system PTEs once and later maps
 * locked MDLs into it at up to DISPATCH_LEVEL without allocating anything.
 *
 * Layout [DECISION §7.3, Windows 8+ x64 form]: N + 2 system PTEs for N pages; the caller gets the
 * VA of the third. The two in front are never present and carry the bookkeeping:
 *   PTE[-2] size PTE = (N + 2) << 28
 *   PTE[-1] tag PTE  = (Tag | 1) << 28
 * Bit 0 of both is clear, so a stray access to a header page faults like an unmapped page.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "mdl.h"
#include "ntddk.h"

#define RESERVED_MAPPING_HEADER_PTES 2
#define RESERVED_MAPPING_FIELD_SHIFT 28 /* MMPTE_LIST.NextEntry on Windows 8+ x64 */

#define MM_MAPPING_ADDRESS_DIVISIBLE 0x1 /* Ex flag; [DECISION] accepted, same reservation */

/* SYSTEM_PTE_MISUSE P1 of the family (ddi-spec §7.8). */
#define PTE_MISUSE_ZERO_MAPPINGS 0x100       /* P2 pages asked (0), P3 tag, P4 caller's return address */
#define PTE_MISUSE_FREE_NOT_OWNER 0x101      /* P2 base, P3 tag, P4 owner tag (0: no tag PTE there) */
#define PTE_MISUSE_FREE_EMPTY 0x102          /* P2 base, P3 tag, P4 caller's return address */
#define PTE_MISUSE_FREE_STILL_MAPPED 0x103   /* P2 first non-zero data PTE (self-map VA), P3 tag, P4 N */
#define PTE_MISUSE_MAP_NOT_OWNER 0x104       /* P2 mapping address, P3 tag, P4 owner tag */
#define PTE_MISUSE_MAP_INVALID_RANGE 0x105   /* P2 mapping address, P3 tag, P4 caller's return address */
#define PTE_MISUSE_MAP_NOT_EMPTY 0x107       /* P2 mapping address, P3 first non-zero PTE, P4 last target PTE */
#define PTE_MISUSE_UNMAP_NOT_OWNER 0x108     /* P2 base, P3 tag, P4 owner tag */
#define PTE_MISUSE_UNMAP_EMPTY 0x109         /* P2 base, P3 tag, P4 caller's return address */
#define PTE_MISUSE_UNMAP_TOO_MANY 0x10A      /* P2 base, P3 N, P4 pages of the MDL */
#define PTE_MISUSE_UNMAP_NOT_MAPPED 0x10B    /* P2 base, P3 tag, P4 pages of the MDL */
#define PTE_MISUSE_UNMAP_NOT_ENTIRE 0x10C    /* P2 base, P3 tag, P4 pages of the MDL */

/* NULL for tag 0 or when no run of N + 2 system PTEs is free; IRQL <= APC_LEVEL. */
PVOID MmAllocateMappingAddress(SIZE_T NumberOfBytes, ULONG PoolTag);
/* Flags 0 or MM_MAPPING_ADDRESS_DIVISIBLE; any other bit gives NULL. */
PVOID MmAllocateMappingAddressEx(SIZE_T NumberOfBytes, ULONG PoolTag, ULONG Flags);
void MmFreeMappingAddress(PVOID BaseAddress, ULONG PoolTag);
/*
 * Maps the MDL's pages at the start of the reservation (page i at reservation page i): returns the
 * reservation start + ByteOffset, or NULL when the MDL spans more pages than the reservation holds
 * or CacheType is not one of §1.2. IRQL <= DISPATCH_LEVEL.
 */
PVOID MmMapLockedPagesWithReservedMapping(PVOID MappingAddress, ULONG PoolTag, PMDL MemoryDescriptorList,
					  MEMORY_CACHING_TYPE CacheType);
void MmUnmapReservedMapping(PVOID BaseAddress, ULONG PoolTag, PMDL MemoryDescriptorList);
