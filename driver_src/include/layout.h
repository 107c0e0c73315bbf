/*
 * The kernel's virtual address space. Regions follow NT x64 (ddi-spec §2.2); the physmap is ours.
 *
 *   0x0000000000000000 +------------------------------------------------+
 *                      | user half: no identity map survives boot, so    |
 *                      | no VA equals its PA; U/S=1 only on the path to  |
 *                      | the user region below (usermode.h)              |
 *   0x0000000010000000 |   user region, tables built at first use:       |
 *                      |   ring-3 probe code (R X), its stack (RW NX)    |
 *   0x0000000010200000 |   user views: 512 pages (DXGK and MDL user      |
 *                      |   mappings, user test pages)                    |
 *   0x00007FFFFFFFFFFF +------------------------------------------------+
 *                      :  non-canonical (4-level); user half (5-level)   :
 *   0xFFFF880000000000 +------------------------------------------------+
 *                      | physmap: all RAM, RW NX, 1 GiB leaves (2 MiB    |
 *                      | without pdpe1gb); physmap + pa = pa   [DECISION] |
 *   0xFFFFF68000000000 +------------------------------------------------+
 *                      | self-map, 4-level: PML4 slot 0x1ED (PTE_BASE)   |
 *   0xFFFFF70000000000 +------------------------------------------------+
 *                      | hyperspace: MmCopyMemory's copy windows, one    |
 *                      | page per CPU (CPU k's at +k pages), not global  |
 *   0xFFFFF80000000000 | loader mappings                                 |
 *   0xFFFFF80000200000 |   kernel image, 4 KiB pages: text RX,           |
 *                      |   rodata R NX, data+bss RW NX                   |
 *   0xFFFFF80040000000 |   per-CPU stacks, 128 KiB of VA per CPU (CPU k  |
 *                      |   at +k * 0x20000), RW NX, each stack above a   |
 *                      |   guard page that is never mapped:              |
 *                      |   +0x00000 guard, +0x01000 kernel stack 16 KiB  |
 *                      |   APs only (the BSP's are in the image's bss):  |
 *                      |   +0x05000 guard, +0x06000 ring-0 stack 8 KiB,  |
 *                      |   then guard + 8 KiB for the #DF, NMI and #MC   |
 *                      |   IST stacks; up to +0x11000                    |
 *   0xFFFFF98000000000 +------------------------------------------------+
 *                      | system PTEs: 22000 pages, 4 KiB only, tables    |
 *                      | linked at first reservation (syspte.h); every   |
 *                      | mapping DDI maps here                           |
 *   0xFFFFFA8000000000 +------------------------------------------------+
 *                      | PFN database: 16 bytes per frame up to the      |
 *                      | highest RAM frame                               |
 *   next 1 GiB bound.  +------------------------------------------------+
 *                      | nonpaged pool: 1 GiB of VA, 4 KiB pages         |
 *                      +------------------------------------------------+
 *                      :  unused                                         :
 *   0xFFFFFFFFFFC00000 +------------------------------------------------+
 *                      | HAL (NT's 4 MiB): device registers, 4 KiB UC   |
 *                      | pages RW NX: the local APIC's at its base      |
 *   0xFFFFFFFFFFFFFFFF +------------------------------------------------+
 *
 *   5-level paging: the same regions (all inside PML5 slot 0x1FF); the self-map moves to
 *   PML5 slot 0x1ED, 0xFFED000000000000..0xFFEDFFFFFFFFFFFF.
 *
 *   The access probe's private address space (access_probe.h, loaded only during a batch) maps
 *   none of the above but the probe's own pages (code, data, stacks) and the GDT, TSS and TSS.RSP0
 *   stack pages, at their kernel VAs, without XD; its ring-3 code and stack at
 *   ACCESS_PROBE_USER_CODE_VA; and in every other top-level slot one case's chain of entries.
 *
 *   Physical: the APs' real-mode start-up code is copied to AP_TRAMPOLINE_PA, a page of the
 *   firmware RAM below 1 MiB that the frame allocator never hands out (kernel/smp.c); the map of
 *   that RAM is in low_memory.h.
 */
#pragma once
#include "const.h"
#include "low_memory.h" /* physical RAM below 1 MiB */

/* The kernel is linked at KERNEL_VIRT_OFFSET + its load address, and loaded (PVH) at KERNEL_PHYS_BASE. */
#define LOADER_MAPPINGS_BASE U64_C(0xFFFFF80000000000)
#define KERNEL_VIRT_OFFSET LOADER_MAPPINGS_BASE
#define KERNEL_PHYS_BASE 0x200000
#define KERNEL_VIRT_BASE (KERNEL_VIRT_OFFSET + KERNEL_PHYS_BASE)

/* Top-level slots the boot stub fills in its temporary tables, spelt out for the assembler. */
#define KERNEL_PML4_SLOT 0x1F0
#define KERNEL_PML5_SLOT 0x1FF

#define PHYSMAP_BASE U64_C(0xFFFF880000000000)
#define PHYSMAP_LIMIT U64_C(0xFFFFF68000000000) /* the 4-level self-map starts here */

/* CPU k's stacks: its slot starts with a guard page, then the kernel stack (CPU 0's is the boot one). */
#define CPU_STACKS_BASE U64_C(0xFFFFF80040000000)
#define CPU_STACKS_STRIDE 0x20000
#define KERNEL_STACK_SIZE 0x4000
#define CPU_KERNEL_STACK_BASE(k) (CPU_STACKS_BASE + (uint64_t)(k) * CPU_STACKS_STRIDE + 0x1000)
#define CPU_KERNEL_STACK_TOP(k) (CPU_KERNEL_STACK_BASE(k) + KERNEL_STACK_SIZE)
/* An AP's ring-0 stack (n = 0) and IST stacks (n = 1..3), each above a guard page. */
#define CPU_AUX_STACK_SIZE 0x2000
#define CPU_AUX_STACK_BASE(k, n) \
	(CPU_KERNEL_STACK_TOP(k) + 0x1000 + (uint64_t)(n) * (CPU_AUX_STACK_SIZE + 0x1000))
#define CPU_AUX_STACKS 4
#define KERNEL_STACK_GUARD CPU_STACKS_BASE
#define KERNEL_STACK_BASE CPU_KERNEL_STACK_BASE(0)
#define KERNEL_STACK_TOP CPU_KERNEL_STACK_TOP(0)

#define HYPERSPACE_BASE U64_C(0xFFFFF70000000000)
/* MmCopyMemory maps physical sources here, a page at a time: one window per CPU. */
#define COPY_WINDOW_VA(k) (HYPERSPACE_BASE + (uint64_t)(k) * 0x1000)

#define SYSTEM_PTE_BASE U64_C(0xFFFFF98000000000)
#define PFN_DATABASE_BASE U64_C(0xFFFFFA8000000000)
#define NONPAGED_POOL_ALIGN BIT(30)
#define NONPAGED_POOL_SIZE BIT(30)

#define HAL_BASE U64_C(0xFFFFFFFFFFC00000)
#define LOCAL_APIC_BASE HAL_BASE

/* In the access probe's space only: its ring-3 code (R X) and stack (RW), both user pages. */
#define ACCESS_PROBE_USER_CODE_VA U64_C(0x0000000020000000)
#define ACCESS_PROBE_USER_STACK_VA (ACCESS_PROBE_USER_CODE_VA + 0x1000)

#ifndef __ASSEMBLER__
#include "paging.h"

_Static_assert(LEVEL_INDEX(KERNEL_VIRT_BASE, 4) == KERNEL_PML4_SLOT, "boot stub kernel slot");
_Static_assert(LEVEL_INDEX(KERNEL_VIRT_BASE, 5) == KERNEL_PML5_SLOT, "boot stub kernel slot");
_Static_assert(KERNEL_PHYS_BASE % LEVEL_SIZE(2) == 0, "boot stub maps the image with 2 MiB pages");
_Static_assert(LEVEL_INDEX(PHYSMAP_BASE, 4) != SELFMAP_SLOT, "physmap clear of the self-map");
_Static_assert(AP_TRAMPOLINE_PA % PAGE_SIZE == 0 && AP_TRAMPOLINE_PA < 0x100000, "SIPI vector");
_Static_assert(CPU_AUX_STACK_BASE(0, CPU_AUX_STACKS) <= CPU_STACKS_BASE + CPU_STACKS_STRIDE, "CPU stack slot");

/* Linker-script symbols: the image's sections, each page aligned. */
extern char __image_start[], __text_start[], __text_end[], __rodata_start[], __rodata_end[];
extern char __data_start[], __data_end[], __image_end[];

static inline void *phys_to_virt(uint64_t pa)
{
	return (void *)(PHYSMAP_BASE + pa);
}

static inline uint64_t image_virt_to_phys(const void *va)
{
	return (uint64_t)va - KERNEL_VIRT_OFFSET;
}
#endif
