/* Pool (ddi-spec §11): set-up, ExAllocatePool2's flags, and this family's bugcheck subcodes. */
#pragma once
#include <stdint.h>
#include "ntddk.h"

extern uint64_t nonpaged_pool_base; /* NONPAGED_POOL_SIZE bytes of VA from here */

void pool_init(void);

typedef uint64_t POOL_FLAGS;
/* Low 32 bits: required (an unknown or unsatisfiable one fails the call); high 32 bits: optional. */
#define POOL_FLAG_USE_QUOTA 0x1ULL
#define POOL_FLAG_UNINITIALIZED 0x2ULL
#define POOL_FLAG_SESSION 0x4ULL
#define POOL_FLAG_CACHE_ALIGNED 0x8ULL
#define POOL_FLAG_RAISE_ON_FAILURE 0x20ULL
#define POOL_FLAG_NON_PAGED 0x40ULL /* NX */
#define POOL_FLAG_NON_PAGED_EXECUTE 0x80ULL
#define POOL_FLAG_PAGED 0x100ULL
#define POOL_FLAG_SPECIAL_POOL 0x100000000ULL

PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
void ExFreePool(PVOID P);

/* ' GIB' as NT writes it: the bytes "BIG ", reserved for the pool's big-page table. */
#define POOL_TAG_RESERVED_BIG 0x20474942u

/* BAD_POOL_CALLER P1 beyond the ones bugcodes.h shares. */
#define POOL_ALLOCATE_AT_BAD_IRQL 0x08 /* P2 IRQL, P3 pool type, P4 size */
#define POOL_FREE_AT_BAD_IRQL 0x09     /* P2 IRQL, P3 pool type, P4 address */
#define POOL_FREE_USER_ADDRESS 0x40    /* P2 address, P3 start of system space */
#define POOL_TAG_ZERO 0x9B             /* P2 pool type, P3 size, P4 caller */
#define POOL_TAG_BIG 0x9C              /* P2 pool type, P3 size, P4 caller */
#define POOL_TAG_NOT_ALPHANUMERIC 0x9D /* P2 tag, P3 pool type, P4 caller */
/* DRIVER_VERIFIER_DETECTED_VIOLATION P1: a zero-byte request (P2 IRQL, P3 pool type). */
#define VERIFIER_POOL_ZERO_BYTES 0x00
