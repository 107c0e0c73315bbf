/*
 * Where boot time goes: a TSC stamp at the end of each phase, from the boot stub's first
 * instruction to the agent's hello, and the ticks the console spent writing in that time. `mmhil
 * bench boot --phases` reads them (`boot_phases`) and places them on the host's clock.
 */
#pragma once
#include <stdint.h>

enum boot_phase {
	BOOT_ENTRY,         /* the boot stub's first instruction */
	BOOT_LONG_MODE,     /* kernel_boot(): boot tables, paging, long mode */
	BOOT_CPU,           /* console, traps, CPU features, boot info */
	BOOT_FRAMES,        /* boot-time frame carving */
	BOOT_ADDRESS_SPACE, /* the kernel's own tables, CR3 switched */
	BOOT_PFN_DATABASE,
	BOOT_MEMORY_MANAGER, /* pool, system PTEs, copy window */
	BOOT_APS,           /* the other CPUs started (smp.c) */
	BOOT_HELLO,         /* the agent's hello composed: its doorbell, or its last COM2 bytes, are next */
	BOOT_PHASE_COUNT,
};

extern uint64_t boot_entry_tsc; /* written by the boot stub */
void boot_phase_done(enum boot_phase phase);
const char *boot_phase_name(enum boot_phase phase);
uint64_t boot_phase_tsc(enum boot_phase phase);
uint64_t boot_console_ticks(void); /* console_ticks() at the hello's stamp */

/* boot_report.c: paging, CPU features, memory map, frames and layout, on the console. */
void boot_report_print(void);

/* console.c: the time and bytes the console has written so far. */
uint64_t console_ticks(void);
uint64_t console_bytes(void);
