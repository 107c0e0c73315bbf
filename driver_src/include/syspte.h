/*
 * The system PTE region (layout.h): SYSTEM_PTE_COUNT 4 KiB pages of VA, mapped by 4 KiB PTEs only.
 * One allocator serves every mapping DDI (MDL mappings, reserved mappings, I/O space, DXGK views).
 *
 * [DECISION] The frames of the region's page tables are set aside at boot, and each table is zeroed
 * and linked when a reservation first reaches its 2 MiB. So a reservation never fails and a mapping
 * never allocates for want of a table, as if all were built at boot, yet boot zeroes none of them:
 * under this machine's KVM, building the 43 tables took about 55 ms of a 130 ms guest boot. A page
 * of the region that no reservation ever reached has no PTE at all (a walk stops at its PDE).
 *
 * [DECISION] A bitmap allocator stands in for ReactOS's PTE clusters (ddi-spec §2.3): it keeps its
 * state outside the PTEs, so reserved-mapping header PTEs cannot be mistaken for free-list links,
 * and a second bitmap marks where each allocation starts, so a release of the wrong range is
 * caught (SYSTEM_PTE_MISUSE 0x303-0x306) instead of corrupting a neighbour.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "layout.h"

#define SYSTEM_PTE_COUNT 22000 /* ReactOS MI_NUMBER_SYSTEM_PTES */
#define SYSTEM_PTE_END (SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE_SIZE)

/* SYSTEM_PTE_MISUSE P1 for releases (P2 the first VA, P3 the count asked, P4 as noted). */
#define SYSPTE_RELEASE_NOT_RESERVED 0x303   /* P4 0: the range lies outside the region */
#define SYSPTE_RELEASE_MID_ALLOCATION 0x304 /* P4 0: starts inside another allocation */
#define SYSPTE_RELEASE_WRONG_COUNT 0x305    /* P4 the allocation's real size */
#define SYSPTE_RELEASE_ALREADY_FREE 0x306   /* P4 0 */

/* Before the PFN database exists, when frames cost least to take. */
void syspte_set_aside_tables(void);
/* Builds the tables above the region's page tables. */
void syspte_init(void);
/* count contiguous PTEs, all zero; returns the VA they map, or 0 when no run is free. */
uint64_t syspte_reserve(uint64_t count);
/*
 * Gives back an allocation whole: va its first page, count its size. The PTEs must not be present
 * any more (unmap through pt_clear and flush first); software contents such as reserved-mapping
 * headers are zeroed here.
 */
void syspte_release(uint64_t va, uint64_t count);
bool syspte_contains(uint64_t va, uint64_t count);
/* The PTE of a page of a reservation, through the self-map. */
volatile uint64_t *syspte_entry(uint64_t va);
uint64_t syspte_in_use(void);
