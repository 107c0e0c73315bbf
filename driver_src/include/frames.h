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
	PFN_NOT_RAM,      /* a hole, MMIO or a firmware-reserved range */
	PFN_FREE,
	PFN_FIRMWARE,     /* RAM below 1 MiB: real-mode data, BIOS, the PVH hand-off */
	PFN_KERNEL_IMAGE,
	PFN_PAGE_TABLE,
	PFN_DATABASE,
	PFN_KERNEL_STACK,
	PFN_POOL,
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
void frame_free(pfn_t pfn, enum pfn_state expected);

struct frame_stats frame_stats(void);
unsigned ram_ranges(const struct ram_range **ranges); /* sorted, disjoint */
uint64_t pfn_database_end(void);
const char *pfn_state_name(enum pfn_state state);
uint64_t frames_in_state(enum pfn_state state);
