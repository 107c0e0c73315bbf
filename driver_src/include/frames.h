/*
 * Physical frames. Until the PFN database exists, frames are carved top-down from the highest
 * RAM and logged; pfn_database_init() then builds one entry per frame up to the highest RAM
 * frame and takes over. Every change of a frame's state is checked: a frame handed out twice
 * or freed in the wrong state bugchecks PFN_LIST_CORRUPT.
 */
#pragma once
#include <stdint.h>

typedef uint64_t pfn_t;

#define PFN_NONE 0 /* never handed out: frame 0 is firmware memory */

enum pfn_state {
	PFN_FREE,         /* zero: the database starts as one memset over RAM */
	PFN_NOT_RAM,      /* a hole, MMIO or a firmware-reserved range */
	PFN_FIRMWARE,     /* RAM below 1 MiB: real-mode data, BIOS, the PVH hand-off */
	PFN_KERNEL_IMAGE,
	PFN_PAGE_TABLE,
	PFN_DATABASE,
	PFN_KERNEL_STACK,
	PFN_POOL,
	PFN_MDL_PAGES,    /* MmAllocatePagesForMdl(Ex) */
	PFN_CONTIGUOUS,   /* MmAllocateContiguousMemory* */
	PFN_STATE_COUNT,
};

struct ram_range {
	pfn_t first, end; /* frames first..end-1 */
};

struct frame_stats {
	uint64_t total, free, highest_pfn, above_4g_total, above_4g_in_use;
};

void frames_bootstrap(void);
void pfn_database_init(void);

/* PFN_NONE when no frame is left (before the PFN database exists: bugchecks instead). */
pfn_t frame_alloc(enum pfn_state purpose);
/* Bugchecks PFN_LIST_CORRUPT when the frame is not in state expected, or still locked. */
void frame_free(pfn_t pfn, enum pfn_state expected);
/* count free frames in lowest..highest (inclusive) that do not cross a multiple of boundary_pages
 * (0: no boundary); the first one's PFN, or PFN_NONE. */
pfn_t frames_alloc_contiguous(uint64_t count, pfn_t lowest, pfn_t highest, uint64_t boundary_pages,
			      enum pfn_state purpose);
/* PFN_NOT_RAM for frames the database does not track (holes, MMIO, beyond the highest RAM). */
enum pfn_state frame_state(pfn_t pfn);
/* Lock counts for I/O (MDLs). Locking a free or non-RAM frame bugchecks MEMORY_MANAGEMENT 0x1233;
 * unlocking one that is not locked, PFN_LIST_CORRUPT 0x07. Both return the new count. */
uint32_t frame_lock(pfn_t pfn);
uint32_t frame_unlock(pfn_t pfn);
uint32_t frame_lock_count(pfn_t pfn);

struct frame_stats frame_stats(void);
unsigned ram_ranges(const struct ram_range **ranges); /* sorted, disjoint */
uint64_t pfn_database_end(void);
const char *pfn_state_name(enum pfn_state state);
uint64_t frames_in_state(enum pfn_state state);
