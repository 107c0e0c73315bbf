/*
 * Memory descriptor lists (ddi-spec §1.6-§1.8, §8): the x64 MDL byte for byte, its flags and
 * macros, the types the MDL DDIs take, and their prototypes (mm/mdl.c, mm/mdl_map.c).
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bugcodes.h"
#include "ntddk.h"
#include "paging.h"

typedef int16_t CSHORT;
typedef uint64_t PFN_NUMBER;
typedef PFN_NUMBER *PPFN_NUMBER;
typedef enum { IoReadAccess = 0, IoWriteAccess = 1, IoModifyAccess = 2 } LOCK_OPERATION;

typedef enum { LowPagePriority = 0, NormalPagePriority = 16, HighPagePriority = 32 } MM_PAGE_PRIORITY;

/* OR-able into the Priority of the mapping DDIs (Windows 8+). */
#define MdlMappingNoWrite 0x80000000u
#define MdlMappingNoExecute 0x40000000u

struct _EPROCESS;

typedef struct _MDL {
	struct _MDL *Next;
	CSHORT Size;
	CSHORT MdlFlags;
	uint16_t AllocationProcessorNumber;
	uint16_t Reserved;
	struct _EPROCESS *Process;
	PVOID MappedSystemVa;
	PVOID StartVa;
	ULONG ByteCount;
	ULONG ByteOffset;
} MDL, *PMDL;

_Static_assert(offsetof(MDL, Next) == 0x00, "MDL.Next");
_Static_assert(offsetof(MDL, Size) == 0x08, "MDL.Size");
_Static_assert(offsetof(MDL, MdlFlags) == 0x0A, "MDL.MdlFlags");
_Static_assert(offsetof(MDL, AllocationProcessorNumber) == 0x0C, "MDL.AllocationProcessorNumber");
_Static_assert(offsetof(MDL, Reserved) == 0x0E, "MDL.Reserved");
_Static_assert(offsetof(MDL, Process) == 0x10, "MDL.Process");
_Static_assert(offsetof(MDL, MappedSystemVa) == 0x18, "MDL.MappedSystemVa");
_Static_assert(offsetof(MDL, StartVa) == 0x20, "MDL.StartVa");
_Static_assert(offsetof(MDL, ByteCount) == 0x28, "MDL.ByteCount");
_Static_assert(offsetof(MDL, ByteOffset) == 0x2C, "MDL.ByteOffset");
_Static_assert(sizeof(MDL) == 0x30, "the PFN array starts at +0x30");

/* The start of an x64 IRP: all IoAllocateMdl touches. */
typedef struct _IRP {
	CSHORT Type;
	uint16_t Size;
	uint16_t AllocationProcessorNumber;
	uint16_t Reserved;
	PMDL MdlAddress;
} IRP, *PIRP;
_Static_assert(offsetof(IRP, MdlAddress) == 0x08, "IRP.MdlAddress");

#define MDL_MAPPED_TO_SYSTEM_VA 0x0001
#define MDL_PAGES_LOCKED 0x0002
#define MDL_SOURCE_IS_NONPAGED_POOL 0x0004
#define MDL_ALLOCATED_FIXED_SIZE 0x0008
#define MDL_PARTIAL 0x0010
#define MDL_PARTIAL_HAS_BEEN_MAPPED 0x0020
#define MDL_IO_PAGE_READ 0x0040
#define MDL_WRITE_OPERATION 0x0080
#define MDL_PARENT_MAPPED_SYSTEM_VA 0x0100
#define MDL_FREE_EXTRA_PTES 0x0200
#define MDL_DESCRIBES_AWE 0x0400
#define MDL_IO_SPACE 0x0800
#define MDL_NETWORK_HEADER 0x1000
#define MDL_MAPPING_CAN_FAIL 0x2000
#define MDL_ALLOCATED_MUST_SUCCEED 0x4000
#define MDL_INTERNAL 0x8000

/* ReactOS's LIST_HEAD: ends a PFN array holding fewer pages than the MDL spans. */
#define MDL_PFN_END ((PFN_NUMBER)-1)

/* ' LDM' in NT's reversed literal: pool dumps show "MDL ". */
#define TAG_MDL 0x204C444Du

/* MmAllocatePagesForMdlEx flags. */
#define MM_DONT_ZERO_ALLOCATION 0x001
#define MM_ALLOCATE_FROM_LOCAL_NODE_ONLY 0x002
#define MM_ALLOCATE_FULLY_REQUIRED 0x004
#define MM_ALLOCATE_NO_WAIT 0x008
#define MM_ALLOCATE_PREFER_CONTIGUOUS 0x010
#define MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS 0x020
#define MM_ALLOCATE_FAST_LARGE_PAGES 0x040
#define MM_ALLOCATE_AND_HOT_REMOVE 0x100

#define MM_HIGHEST_USER_ADDRESS 0x00007FFFFFFEFFFFull
#define MM_USER_PROBE_ADDRESS 0x00007FFFFFFF0000ull

/* STATUS_ACCESS_VIOLATION comes from bugcodes.h, the other statuses from ntddk.h. */

/* §1.8 macros. */
#define BYTE_OFFSET(va) ((ULONG)((ULONG_PTR)(va) & (PAGE_SIZE - 1)))
#define PAGE_ALIGN(va) ((PVOID)((ULONG_PTR)(va) & ~(ULONG_PTR)(PAGE_SIZE - 1)))
#define BYTES_TO_PAGES(n) (((n) >> PAGE_SHIFT) + (((n) & (PAGE_SIZE - 1)) != 0))
#define ROUND_TO_PAGES(n) (((ULONG_PTR)(n) + PAGE_SIZE - 1) & ~(ULONG_PTR)(PAGE_SIZE - 1))
#define ADDRESS_AND_SIZE_TO_SPAN_PAGES(va, n) \
	((ULONG)((((ULONG_PTR)(va) & (PAGE_SIZE - 1)) + (uint64_t)(n) + PAGE_SIZE - 1) >> PAGE_SHIFT))
#define MmGetMdlVirtualAddress(m) ((PVOID)((char *)(m)->StartVa + (m)->ByteOffset))
#define MmGetMdlByteCount(m) ((m)->ByteCount)
#define MmGetMdlByteOffset(m) ((m)->ByteOffset)
#define MmGetMdlPfnArray(m) ((PPFN_NUMBER)((m) + 1))
#define MmGetMdlPageCount(m) ADDRESS_AND_SIZE_TO_SPAN_PAGES(MmGetMdlVirtualAddress(m), (m)->ByteCount)

/* Size is 16 bits: [DECISION] §8.1, larger MDLs keep it truncated. */
#define MmInitializeMdl(m, base, length) \
	do { \
		(m)->Next = NULL; \
		(m)->Size = (CSHORT)(sizeof(MDL) + sizeof(PFN_NUMBER) * ADDRESS_AND_SIZE_TO_SPAN_PAGES(base, length)); \
		(m)->MdlFlags = 0; \
		(m)->StartVa = PAGE_ALIGN(base); \
		(m)->ByteOffset = BYTE_OFFSET(base); \
		(m)->ByteCount = (ULONG)(length); \
	} while (0)

/* mm/mdl.c */
PMDL IoAllocateMdl(PVOID VirtualAddress, ULONG Length, BOOLEAN SecondaryBuffer, BOOLEAN ChargeQuota, PIRP Irp);
void IoFreeMdl(PMDL Mdl);
SIZE_T MmSizeOfMdl(PVOID Base, SIZE_T Length);
void MmBuildMdlForNonPagedPool(PMDL MemoryDescriptorList);
void IoBuildPartialMdl(PMDL SourceMdl, PMDL TargetMdl, PVOID VirtualAddress, ULONG Length);
void MmPrepareMdlForReuse(PMDL Mdl);
/*
 * NT raises an exception when a probe fails. This kernel has no SEH: [DECISION] the routine
 * returns with the MDL untouched and the status it would have raised in mdl_raised_status
 * (STATUS_SUCCESS otherwise); the agent answers it as the key "raised".
 */
void MmProbeAndLockPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode, LOCK_OPERATION Operation);
void MmUnlockPages(PMDL MemoryDescriptorList);
extern NTSTATUS mdl_raised_status;
PMDL MmAllocatePagesForMdl(PHYSICAL_ADDRESS LowAddress, PHYSICAL_ADDRESS HighAddress, PHYSICAL_ADDRESS SkipBytes,
			   SIZE_T TotalBytes);
PMDL MmAllocatePagesForMdlEx(PHYSICAL_ADDRESS LowAddress, PHYSICAL_ADDRESS HighAddress,
			     PHYSICAL_ADDRESS SkipBytes, SIZE_T TotalBytes, MEMORY_CACHING_TYPE CacheType,
			     ULONG Flags);
void MmFreePagesFromMdl(PMDL MemoryDescriptorList);

/* mm/mdl_map.c */
PVOID MmMapLockedPagesSpecifyCache(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode,
				   MEMORY_CACHING_TYPE CacheType, PVOID RequestedAddress, ULONG BugCheckOnFailure,
				   ULONG Priority);
NORETURN PVOID MmMapLockedPages(PMDL MemoryDescriptorList, KPROCESSOR_MODE AccessMode);
void MmUnmapLockedPages(PVOID BaseAddress, PMDL MemoryDescriptorList);
PVOID MmGetSystemAddressForMdlSafe(PMDL Mdl, ULONG Priority);
/* For every family that maps MDL pages (reserved mappings, DXGK): */
/* the PTE cache bits of a caching type (§2.5); false for types outside 0..5. */
bool mdl_cache_bits(MEMORY_CACHING_TYPE type, uint64_t *bits);
/* Whether mdl has a live user mapping: its pages may then be neither freed nor unlocked (0xC4 0xB8). */
bool mdl_user_mapped(PMDL mdl);
/* Each page up to the span or MDL_PFN_END must be locked or allocated for an MDL (else 0xC4 0x85),
 * and non-RAM only with MDL_IO_SPACE (else 0xC4 0x89). */
void mdl_check_mappable_pages(PMDL mdl);

/* Leak counts (mm/mdl.c): pages locked by MmProbeAndLockPages, mapped by MmMapLockedPages* to
 * system space, and (mm/mdl_map.c) to user space. */
extern uint64_t mdl_locked_pages, mdl_mapped_pages, mdl_user_mapped_pages;

/* DRIVER_VERIFIER_DETECTED_VIOLATION subcodes of the MDL family (ddi-spec §8, §13). */
#define VERIFIER_PROBE_NOT_IN_PFN_DATABASE 0x6F /* Mdl, Pfn, HighestPfn */
#define VERIFIER_PROBE_IRQL 0x70                /* Irql, Mdl, AccessMode */
#define VERIFIER_MAP_KERNEL_IRQL 0x76           /* Irql, Mdl, AccessMode */
#define VERIFIER_MAP_USER_IRQL 0x77             /* Irql, Mdl, AccessMode */
#define VERIFIER_UNLOCK_IRQL 0x78               /* Irql, Mdl, 0 */
#define VERIFIER_UNMAP_KERNEL_IRQL 0x79         /* Irql, VA, Mdl */
#define VERIFIER_UNMAP_USER_IRQL 0x7A           /* Irql, VA, Mdl */
#define VERIFIER_UNLOCK_NOT_LOCKED 0x7C         /* Mdl, MdlFlags, 0 */
#define VERIFIER_UNLOCK_NONPAGED 0x7D           /* Mdl, MdlFlags, 0 */
#define VERIFIER_ALLOCATE_PAGES_IRQL 0x7E       /* Irql, DISPATCH_LEVEL, 0 */
#define VERIFIER_MAP_LOCKED_PAGES_OBSOLETE 0x81  /* Mdl, MdlFlags, 0 */
#define VERIFIER_MAP_UNLOCKED_PAGE 0x85         /* Mdl, PageCount, Pfn */
#define VERIFIER_MAP_NOT_RAM_WITHOUT_IO_SPACE 0x89 /* Mdl, &Pfn, Pfn */
#define VERIFIER_PROBE_BAD_FLAGS 0xB0           /* Mdl, MdlFlags, bad flags */
#define VERIFIER_MAP_BAD_FLAGS 0xB2             /* Mdl, MdlFlags, bad flags */
#define VERIFIER_MAP_MISSING_FLAGS 0xB3         /* Mdl, MdlFlags, missing flags */
#define VERIFIER_UNLOCK_PARTIAL 0xB4            /* Mdl, MdlFlags, MDL_PARTIAL */
#define VERIFIER_UNMAP_PARTIAL 0xB5             /* Mdl, MdlFlags, MDL_PARTIAL */
#define VERIFIER_FREE_MAPPED_MDL 0xB8           /* Mdl, MdlFlags, 0 */
#define VERIFIER_UNMAP_BAD_USER_ADDRESS 0xB9    /* VA, Mdl, 0 */
#define VERIFIER_BUILD_FROM_STACK 0x140         /* Irql, Mdl, VA */

/* MEMORY_MANAGEMENT subcodes. */
#define MM_MDL_FOREIGN_PAGE 0x1236     /* Mdl, &Pfn[i], Pfn[i] */
#define MM_MDL_NOT_RESIDENT 0x1240     /* Mdl, PTE pointer, 0 */

/* SYSTEM_PTE_MISUSE subcodes of MmUnmapLockedPages. */
#define PTE_MISUSE_WRONG_ADDRESS 0x03  /* 0, expected VA, given VA */
#define PTE_MISUSE_NEVER_MAPPED 0x06   /* Mdl, VA, PageCount */
