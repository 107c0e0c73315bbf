/* MmCopyMemory (ddi-spec §6): its NT types and statuses, and the copy PTE it maps sources through. */
#pragma once
#include <stdint.h>
#include "ntddk.h"

typedef struct _MM_COPY_ADDRESS {
	union {
		PVOID VirtualAddress;
		PHYSICAL_ADDRESS PhysicalAddress;
	};
} MM_COPY_ADDRESS, *PMMCOPY_ADDRESS;

#define MM_COPY_MEMORY_PHYSICAL 0x1
#define MM_COPY_MEMORY_VIRTUAL 0x2

NTSTATUS MmCopyMemory(PVOID TargetAddress, MM_COPY_ADDRESS SourceAddress, SIZE_T NumberOfBytes, ULONG Flags,
		      PSIZE_T NumberOfBytesTransferred);

/* Builds the page table of the copy windows (layout.h), once, at boot. */
void copy_init(void);
/* The VA this CPU's copy PTE maps (its PTE is zero between copies). */
uint64_t copy_pte_va(void);
