/* MmCopyMemory (ddi-spec §6): its NT types and statuses, and the copy PTE it maps sources through. */
#pragma once
#include <stdint.h>
#include "ntddk.h"

typedef int32_t NTSTATUS;
typedef SIZE_T *PSIZE_T;

typedef struct _MM_COPY_ADDRESS {
	union {
		PVOID VirtualAddress;
		PHYSICAL_ADDRESS PhysicalAddress;
	};
} MM_COPY_ADDRESS, *PMMCOPY_ADDRESS;

#define MM_COPY_MEMORY_PHYSICAL 0x1
#define MM_COPY_MEMORY_VIRTUAL 0x2

#define STATUS_SUCCESS ((NTSTATUS)0x00000000)
#define STATUS_INVALID_PARAMETER_4 ((NTSTATUS)0xC00000F2)
#define STATUS_INVALID_PARAMETER_5 ((NTSTATUS)0xC00000F3)
#define STATUS_INVALID_ADDRESS ((NTSTATUS)0xC0000141)

NTSTATUS MmCopyMemory(PVOID TargetAddress, MM_COPY_ADDRESS SourceAddress, SIZE_T NumberOfBytes, ULONG Flags,
		      PSIZE_T NumberOfBytesTransferred);

/* Reserves the copy PTE from the system-PTE allocator, once, at boot. */
void copy_init(void);
/* The VA the copy PTE maps (its PTE is zero between copies). */
uint64_t copy_pte_va(void);
