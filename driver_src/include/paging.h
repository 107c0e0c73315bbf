/*
 * x86-64 paging: every architectural paging constant lives here (Intel SDM Vol. 3, ch. 4),
 * together with the NT recursive self-map derivation (ddi-spec §2.1).
 *
 * Levels are numbered from the leaf up: 1 = PT (4 KiB pages), 2 = PD (2 MiB leaves),
 * 3 = PDPT (1 GiB leaves), 4 = PML4, 5 = PML5 (LA57 only).
 */
#pragma once
#include "const.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE BIT(PAGE_SHIFT)
#define PAGE_OFFSET_MASK (PAGE_SIZE - 1)

/* Bits of a paging-structure entry. */
#define PTE_P BIT(0)        /* present */
#define PTE_RW BIT(1)       /* writable */
#define PTE_US BIT(2)       /* user accessible */
#define PTE_PWT BIT(3)      /* PAT index bit 0 */
#define PTE_PCD BIT(4)      /* PAT index bit 1 */
#define PTE_A BIT(5)        /* accessed */
#define PTE_D BIT(6)        /* dirty (leaves only) */
#define PTE_PS BIT(7)       /* levels 2-3: the entry is a leaf (2 MiB / 1 GiB page) */
#define PTE_PAT BIT(7)      /* level 1: PAT index bit 2 */
#define PTE_G BIT(8)        /* global (leaves only, with CR4.PGE) */
#define PTE_PAT_LARGE BIT(12) /* levels 2-3 leaves: PAT index bit 2 */
#define PTE_NX BIT(63)      /* no execute; a reserved bit unless EFER.NXE */

/* Physical address bits 12..51 (MAXPHYADDR is at most 52). */
#define PTE_ADDR_MASK U64_C(0x000FFFFFFFFFF000)

#define PT_INDEX_BITS 9
#define PT_ENTRIES 512
#define LEAF_MAX_LEVEL 3 /* leaves exist at levels 1 to 3 */

#define LEVEL_SHIFT(level) (PAGE_SHIFT + PT_INDEX_BITS * ((level) - 1))
#define LEVEL_SIZE(level) BIT(LEVEL_SHIFT(level)) /* bytes one entry at this level maps */
#define LEVEL_INDEX(va, level) (((va) >> LEVEL_SHIFT(level)) & (PT_ENTRIES - 1))
#define VA_BITS(levels) LEVEL_SHIFT((levels) + 1) /* 48 with 4 levels, 57 with 5 */

/* Bits 51..(level shift) of a leaf: the physical base of the page it maps. */
#define LEAF_ADDR_MASK(level) (PTE_ADDR_MASK & ~(LEVEL_SIZE(level) - 1))

/* #PF error code. */
#define PF_ERR_P BIT(0)    /* 0: the page was not present; 1: a protection violation */
#define PF_ERR_W BIT(1)    /* the access was a write */
#define PF_ERR_US BIT(2)   /* the access came from user mode */
#define PF_ERR_RSVD BIT(3) /* a reserved bit was set in an entry */
#define PF_ERR_ID BIT(4)   /* the access was an instruction fetch */
#define PF_ERR_PK BIT(5)   /* protection-key violation */
#define PF_ERR_SS BIT(6)   /* shadow-stack access */

/*
 * IA32_PAT (ddi-spec §2.5 [DECISION]): PA0 WB, PA1 WC, PA2 UC-, PA3 UC, repeated for PA4-7.
 * A PTE selects entry PAT<<2 | PCD<<1 | PWT: MmCached = 0, MmWriteCombined = PWT, MmNonCached = PWT|PCD.
 */
#define PAT_TYPE_UC 0x00
#define PAT_TYPE_WC 0x01
#define PAT_TYPE_WB 0x06
#define PAT_TYPE_UC_MINUS 0x07
#define PAT_LOW_HALF (PAT_TYPE_WB | PAT_TYPE_WC << 8 | PAT_TYPE_UC_MINUS << 16 | PAT_TYPE_UC << 24)
#define PAT_VALUE ((uint64_t)PAT_LOW_HALF << 32 | PAT_LOW_HALF)

/*
 * NT recursive self-map: the top-level table points at itself from slot 0x1ED. With R the slot and
 * N the number of levels, PTE_BASE = signext(R << LEVEL_SHIFT(N)) (4-level: 0xFFFFF68000000000,
 * NT's pre-1607 value). With LA57 the top table is the PML5, so PTE_BASE = signext57(0x1ED << 48)
 * = 0xFFED000000000000: a [DECISION] by this derivation, since Windows' LA57 constants are not public.
 * The entry for va at level L is found by applying "address of the PTE that maps va" L times.
 */
#define SELFMAP_SLOT 0x1ED
#define SIGN_EXTEND(value, bits) \
	((uint64_t)((int64_t)((uint64_t)(value) << (64 - (bits))) >> (64 - (bits))))
#define SELFMAP_PTE_BASE(levels) SIGN_EXTEND((uint64_t)SELFMAP_SLOT << LEVEL_SHIFT(levels), VA_BITS(levels))
/* The byte offset mask of "va >> 9" inside the PTE array: one 8-byte PTE per 4 KiB of VA. */
#define SELFMAP_OFFSET_MASK(levels) ((BIT(VA_BITS(levels) - PAGE_SHIFT) - 1) << 3)
#define SELFMAP_PTE_ADDRESS(levels, va) \
	(SELFMAP_PTE_BASE(levels) + (((uint64_t)(va) >> (PT_INDEX_BITS)) & SELFMAP_OFFSET_MASK(levels)))

#ifndef __ASSEMBLER__
#include <stdbool.h>
#include <stdint.h>

static inline bool va_is_canonical(uint64_t va, unsigned levels)
{
	return SIGN_EXTEND(va, VA_BITS(levels)) == va;
}

_Static_assert(VA_BITS(4) == 48 && VA_BITS(5) == 57, "level arithmetic");
_Static_assert(LEVEL_SIZE(2) == 0x200000 && LEVEL_SIZE(3) == 0x40000000, "leaf sizes");
_Static_assert(PAT_VALUE == 0x0007010600070106ull, "ddi-spec §2.5 IA32_PAT");
_Static_assert(SELFMAP_PTE_BASE(4) == 0xFFFFF68000000000ull, "NT PTE_BASE");
_Static_assert(SELFMAP_PTE_BASE(5) == 0xFFED000000000000ull, "LA57 PTE_BASE [DECISION]");
/* PDE_BASE, PPE_BASE, PXE_BASE and PXE_SELFMAP of ddi-spec §2.1 follow from PTE_BASE. */
_Static_assert(SELFMAP_PTE_ADDRESS(4, SELFMAP_PTE_BASE(4)) == 0xFFFFF6FB40000000ull, "NT PDE_BASE");
_Static_assert(SELFMAP_PTE_ADDRESS(4, 0xFFFFF6FB40000000ull) == 0xFFFFF6FB7DA00000ull, "NT PPE_BASE");
_Static_assert(SELFMAP_PTE_ADDRESS(4, 0xFFFFF6FB7DA00000ull) == 0xFFFFF6FB7DBED000ull, "NT PXE_BASE");
_Static_assert(SELFMAP_PTE_ADDRESS(4, 0xFFFFF6FB7DBED000ull) == 0xFFFFF6FB7DBEDF68ull, "NT PXE_SELFMAP");
_Static_assert(SELFMAP_OFFSET_MASK(4) == 0x0000007FFFFFFFF8ull, "ddi-spec §2.1 4-level mask");
/* 5-level: 45 bits of page number, 8 bytes each. (ddi-spec §2.1 prints 0x000FFFFFFFFFFFF8, which
 * would let sign-extension bits of va spill into the PML5 index and leave the self-map.) */
_Static_assert(SELFMAP_OFFSET_MASK(5) == 0x0000FFFFFFFFFFF8ull, "5-level PTE offset mask");
#endif
