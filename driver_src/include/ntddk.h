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

typedef int32_t NTSTATUS;
typedef SIZE_T *PSIZE_T;
typedef uint8_t KPROCESSOR_MODE;
#define KernelMode 0
#define UserMode 1

/* The NTSTATUS values the DDIs return (ddi-spec §1.5); exception codes are in bugcodes.h. */
#define STATUS_SUCCESS ((NTSTATUS)0x00000000)
#define STATUS_INVALID_HANDLE ((NTSTATUS)0xC0000008)
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000D)
#define STATUS_CONFLICTING_ADDRESSES ((NTSTATUS)0xC0000018)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009A)
#define STATUS_NOT_SUPPORTED ((NTSTATUS)0xC00000BB)
#define STATUS_INVALID_PARAMETER_3 ((NTSTATUS)0xC00000F1)
#define STATUS_INVALID_PARAMETER_4 ((NTSTATUS)0xC00000F2)
#define STATUS_INVALID_PARAMETER_5 ((NTSTATUS)0xC00000F3)
#define STATUS_INVALID_ADDRESS ((NTSTATUS)0xC0000141)

/* ddi-spec §1.2: the mapping DDIs' caching types. */
typedef enum {
	MmNotMapped = -1,
	MmNonCached = 0,
	MmCached = 1,
	MmWriteCombined = 2,
	MmHardwareCoherentCached = 3,
	MmNonCachedUnordered = 4,
	MmUSWCCached = 5,
	MmMaximumCacheType = 6,
} MEMORY_CACHING_TYPE;

/* ddi-spec §1.4: page protections (MmMapIoSpaceEx, DXGK sections). */
#define PAGE_NOACCESS 0x01
#define PAGE_READONLY 0x02
#define PAGE_READWRITE 0x04
#define PAGE_WRITECOPY 0x08
#define PAGE_EXECUTE 0x10
#define PAGE_EXECUTE_READ 0x20
#define PAGE_EXECUTE_READWRITE 0x40
#define PAGE_EXECUTE_WRITECOPY 0x80
#define PAGE_GUARD 0x100
#define PAGE_NOCACHE 0x200
#define PAGE_WRITECOMBINE 0x400

typedef enum {
	NonPagedPool = 0, /* = NonPagedPoolExecute */
	PagedPool = 1,
	NonPagedPoolNx = 512,
} POOL_TYPE;

typedef KIRQL *PKIRQL;
typedef ULONG_PTR KSPIN_LOCK; /* [DECISION] 0 free, else the owner's CPU index + 1 */
typedef KSPIN_LOCK *PKSPIN_LOCK;

/* kernel/spinlock.c: raise to DISPATCH_LEVEL, then spin with interrupts enabled. */
void KeAcquireSpinLock(PKSPIN_LOCK SpinLock, PKIRQL OldIrql);
void KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql);

/* mm/query.c */
PHYSICAL_ADDRESS MmGetPhysicalAddress(PVOID BaseAddress);
BOOLEAN MmIsAddressValid(PVOID VirtualAddress);

/* mm/pool.c */
PVOID ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);
void ExFreePoolWithTag(PVOID P, ULONG Tag);

/* kernel/bugcheck.c */
NORETURN void KeBugCheckEx(ULONG BugCheckCode, ULONG_PTR BugCheckParameter1, ULONG_PTR BugCheckParameter2,
			   ULONG_PTR BugCheckParameter3, ULONG_PTR BugCheckParameter4);
