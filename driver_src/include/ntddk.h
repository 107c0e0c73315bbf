/* NT types and the DDIs this kernel implements, under their NT names and prototypes. */
#pragma once
#include <stdint.h>
#include "irql.h"

typedef void *PVOID;
typedef uint8_t BOOLEAN;
typedef uint32_t ULONG;
typedef uint64_t ULONG_PTR;
typedef uint64_t SIZE_T;
typedef int64_t LONGLONG;

typedef union {
	struct {
		uint32_t LowPart;
		int32_t HighPart;
	};
	LONGLONG QuadPart;
} PHYSICAL_ADDRESS;

#define TRUE 1
#define FALSE 0

typedef enum {
	NonPagedPool = 0, /* = NonPagedPoolExecute */
	PagedPool = 1,
	NonPagedPoolNx = 512,
} POOL_TYPE;

/* mm/query.c */
PHYSICAL_ADDRESS MmGetPhysicalAddress(PVOID BaseAddress);
BOOLEAN MmIsAddressValid(PVOID VirtualAddress);

/* mm/pool.c */
PVOID ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);
void ExFreePoolWithTag(PVOID P, ULONG Tag);

/* kernel/bugcheck.c */
NORETURN void KeBugCheckEx(ULONG BugCheckCode, ULONG_PTR BugCheckParameter1, ULONG_PTR BugCheckParameter2,
			   ULONG_PTR BugCheckParameter3, ULONG_PTR BugCheckParameter4);
