/*
 * Page tables: one walker for every level and page size, and map/unmap primitives whose result
 * is a flush token that must reach tlb_flush() (dropping it is a compile error).
 *
 * A view says how entries are reached. The live tree (the one CR3 points at) is read and written
 * through the NT self-map, as NT does; a tree under construction is reached through the physmap.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "compiler.h"
#include "frames.h"
#include "paging.h"

extern unsigned paging_levels; /* 4 or 5, as the boot stub set up */

struct pt_view {
	bool live;        /* the tree CR3 points at: reached through the self-map, changes need INVLPG */
	bool private;     /* live, and its VAs are this CPU's alone (a per-CPU window): flushes stay local */
	bool no_physmap;  /* live boot tables building the physmap: new tables are reached by the self-map */
	uint64_t root_pa; /* otherwise: its top-level table, reached through the physmap */
};

/* The live tree, shared by every CPU: a cleared entry is shot down on every other online CPU. */
static inline struct pt_view pt_live(void)
{
	return (struct pt_view){.live = true};
}

static inline struct pt_view pt_live_without_physmap(void)
{
	return (struct pt_view){.live = true, .no_physmap = true};
}

static inline struct pt_view pt_live_private(void)
{
	return (struct pt_view){.live = true, .private = true};
}

static inline struct pt_view pt_tree(uint64_t root_pa)
{
	return (struct pt_view){.live = false, .root_pa = root_pa};
}

enum pt_stop {
	PT_LEAF,          /* a present leaf: a 4 KiB, 2 MiB or 1 GiB page */
	PT_TABLE,         /* a present entry pointing to a table, at the level asked for */
	PT_NOT_PRESENT,   /* an entry with P clear */
	PT_NON_CANONICAL, /* the address is not canonical: no entry was read */
};

struct pt_walk {
	enum pt_stop stop;
	unsigned level;          /* level of the entry the walk stopped at (0 if non-canonical) */
	uint64_t entry;          /* its value */
	volatile uint64_t *slot; /* where it is stored */
};

/* Walks from the top until a leaf, a non-present entry, or the entry at stop_level. */
struct pt_walk pt_walk_to(const struct pt_view *view, uint64_t va, unsigned stop_level);

static inline struct pt_walk pt_walk(const struct pt_view *view, uint64_t va)
{
	return pt_walk_to(view, va, 1);
}

/* The physical address va translates to through a PT_LEAF walk. */
static inline uint64_t pt_leaf_address(const struct pt_walk *walk, uint64_t va)
{
	uint64_t offset_mask = LEVEL_SIZE(walk->level) - 1;
	return (walk->entry & LEAF_ADDR_MASK(walk->level)) | (va & offset_mask);
}

struct tlb_flush {
	uint64_t va;      /* a VA inside the mapping whose entry changed */
	bool changed;     /* false: nothing was written (pt_set could not get a table frame) */
	bool live;
	bool was_present; /* the old entry was present: a CPU may hold its translation */
	uint32_t cpus;    /* the CPUs that may hold it (a cpu_set_t, smp.h): none for pt_set's */
};

/* Creates the tables above level for va, so that its level entry exists; false when no frame is left. */
MUST_USE bool pt_prepare(const struct pt_view *view, uint64_t va, unsigned level);
/* Installs table, a frame the caller set aside (zeroed here), under va's level entry, which must be
 * empty. The tables above are created as pt_prepare does, but a missing frame for one bugchecks
 * INSTALL_MORE_MEMORY: the caller prepared them at boot. */
void pt_link_table(const struct pt_view *view, uint64_t va, unsigned level, pfn_t table);
/* Writes entry at level for va, creating missing tables above it; the slot must be empty. */
MUST_USE struct tlb_flush pt_set(const struct pt_view *view, uint64_t va, unsigned level, uint64_t entry);
/*
 * Maps `count` pages of the given level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) from va, the i-th to
 * first_entry + i * pa_step (0: all to one frame), creating missing tables; every slot must be
 * empty, so the token needs no flush. One walk per table, not per page: under nested KVM each guest
 * instruction is dear. `changed` is false when no frame was left for a table; the pages mapped
 * until then stay mapped.
 */
MUST_USE struct tlb_flush pt_set_range(const struct pt_view *view, uint64_t va, unsigned level, uint64_t count,
				       uint64_t first_entry, uint64_t pa_step);
/* Clears the leaf that maps va and returns its old value; va must be mapped. */
/* Replaces the 4 KiB leaf that maps va with entry in one store, so a CPU reading va meanwhile sees
 * the old page or the new one, never a fault; va must be mapped. */
MUST_USE struct tlb_flush pt_replace(const struct pt_view *view, uint64_t va, uint64_t entry);
MUST_USE struct tlb_flush pt_clear(const struct pt_view *view, uint64_t va, uint64_t *old_entry);
/*
 * mm/tlb.c. INVLPG here, then, when other CPUs may hold the old translation, a TLB shootdown: an
 * IPI to each of them, and a wait (interrupts enabled) until every one has flushed, so on return
 * no CPU can use the old translation. A shootdown unanswered for 5 s stops the kernel with
 * IPI_WATCHDOG_TIMEOUT (P1 the TSC rate assumed, P2 the TSC now, P3 when the wait began, P4 the
 * CPUs that did not answer).
 */
void tlb_flush(struct tlb_flush token);
/*
 * Consumes a token whose old entry was not present (pt_set's): no CPU caches a not-present
 * translation, so there is nothing to invalidate. Saying so where the mapping is made keeps a
 * needless INVLPG from hiding a missing one elsewhere. A token from pt_clear bugchecks here.
 */
void tlb_flush_not_needed(struct tlb_flush token);
/* The shootdown IPI's handler: flushes what the initiators asked, and tells each it is done. */
void tlb_shootdown_interrupt(void);
/* TEST HOOK (agent/cmd_tlb_hook.c): the next count flushes that need a shootdown skip it (the local
 * INVLPG still happens), so a test can show the stale translation another CPU keeps. */
void tlb_skip_remote_flushes(uint64_t count);

enum protection {
	PROT_READ,
	PROT_READ_WRITE,
	PROT_READ_EXECUTE,
	PROT_READ_WRITE_EXECUTE,
};

/* A kernel leaf (A and D preset, global when the CPU has PGE, NX when it has NX). */
uint64_t pte_kernel_leaf(uint64_t pa, unsigned level, enum protection protection);
/* A kernel 4 KiB leaf for device registers: RW, NX, uncached (PCD|PWT: PAT entry 3, UC, or UC
 * without PAT). */
uint64_t pte_device_leaf(uint64_t pa);
/* An entry pointing to a table. */
uint64_t pte_table(uint64_t table_pa);
/* The self-map entry of a top-level table: writable, never executable. */
uint64_t pte_selfmap(uint64_t root_pa);
