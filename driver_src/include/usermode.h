/*
 * User mode: one user address space in the lower half of the kernel's own tables (U/S set on
 * every level on the way to a user page), ring-3 code and data segments, and a ring-3 probe that
 * reads or writes one user VA and comes back to the kernel, a fault included, as a result. The way
 * back is an exception in both cases: the probe ends with UD2 at a known address (docs/ddi/usermode.md:
 * INT n and SYSCALL from ring 3 misbehave under the nested-KVM config).
 *
 * Layout of the user half (layout.h): USER_REGION_BASE holds two 2 MiB page tables, built at first
 * use: the first maps the probe's code and stack, the second is a pool of 4 KiB pages for user
 * views (DxgkCbMapPhysicalMemory with DXGK_ACCESS_MODE_USER_MODE, MmMapLockedPagesSpecifyCache
 * with UserMode, user test pages).
 */
#pragma once
#include "paging.h"

#define USER_REGION_BASE U64_C(0x0000000010000000)
#define USER_PROBE_CODE_VA USER_REGION_BASE                /* the probe routine, R X */
#define USER_PROBE_STACK_VA (USER_REGION_BASE + PAGE_SIZE) /* its stack, RW NX */
#define USER_VIEW_BASE (USER_REGION_BASE + LEVEL_SIZE(2))
#define USER_VIEW_PAGES PT_ENTRIES
#define USER_REGION_END (USER_VIEW_BASE + USER_VIEW_PAGES * PAGE_SIZE)

#define USER_PROBE_READ 0
#define USER_PROBE_WRITE 1

#ifndef __ASSEMBLER__
#include <stdbool.h>
#include <stdint.h>
#include "compiler.h"
#include "trap.h"

struct user_probe_result {
	bool completed;  /* false: ring 3 faulted, vector/error/address say how */
	uint64_t value;  /* a completed read: the qword read */
	uint64_t vector, error, address, rip;
};

/* Builds the user tables and maps the probe (idempotent); false when no frame is left for a table. */
bool usermode_init(void);
/* Runs the probe in ring 3 on va (8 bytes, read or write value) and returns what happened. */
struct user_probe_result usermode_probe(uint64_t va, unsigned op, uint64_t value);

/* User views: count contiguous user pages of VA, their PTEs zero; 0 when none is free. */
uint64_t user_view_reserve(uint64_t count);
/* The same at a given page-aligned VA; 0 when the range leaves the views or any page is taken. */
uint64_t user_view_reserve_at(uint64_t va, uint64_t count);
void user_view_release(uint64_t va, uint64_t count);
/* A user leaf (U/S, A and D preset, NX when the CPU has it), cache bits added by the caller. */
uint64_t pte_user_leaf(uint64_t pa, bool writable);
/* Maps / unmaps one 4 KiB page of a reserved user view in the live tables (flushing its TLB entry). */
void user_map_page(uint64_t va, uint64_t entry);
void user_unmap_page(uint64_t va);

/* Called by trap_handle() for any exception taken in ring 3 (cr2 for a #PF): ends the probe, with
 * its result when the exception is the probe's final UD2, else with that fault. */
NORETURN void usermode_fault(const struct trap_frame *frame, uint64_t cr2);
#endif
