/*
 * Processors (docs/smp.md). CPU 0 is the bootstrap processor (BSP); the application processors
 * (APs) that the ACPI MADT lists are started with INIT-SIPI-SIPI. Every CPU runs on the one set of
 * kernel page tables, with its own stacks, GDT and TSS, the shared IDT, and its own IRQL (CR8);
 * %gs points at the CPU's struct cpu.
 *
 * Execution model [DECISION]: only the BSP's agent reads requests. A request for CPU K is posted in
 * K's work slot and K is woken with an IPI; the BSP waits until K is done. A CPU that waits (idle,
 * for another CPU, for a lock, for a shootdown) does so with interrupts enabled, so TLB shootdown
 * IPIs reach it; a waiting CPU also runs work posted to it meanwhile.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "compiler.h"
#include "irql.h"
#include "nofault.h"

#define MAX_CPUS 8
typedef uint32_t cpu_set_t; /* bit k: CPU k */
#define CPU_BIT(k) ((cpu_set_t)1 << (k))

/*
 * Local APIC vectors. The priority class is vector >> 4, and CR8 = n masks classes 1..n: the
 * shootdown sits in class 14, NT's IPI_LEVEL, so a CPU at DISPATCH_LEVEL (holding a spinlock)
 * still takes it; the wake-up sits in class 15, masked only at HIGH_LEVEL, where waits poll.
 */
#define TLB_SHOOTDOWN_VECTOR 0xE1
#define WAKE_VECTOR 0xF1

/* The TSC rate the kernel's timeouts assume (the host's; TCG and KVM both pass it through). */
#define TSC_ASSUMED_HZ 2600000000ull

/* A function one CPU asks another to run (smp_post); done is set once it has returned. */
struct cpu_work {
	void (*run)(void *argument);
	void *argument;
	unsigned poster; /* woken when done */
	volatile bool done;
};

struct cpu {
	struct cpu *self; /* %gs:0 */
	unsigned index;
	uint32_t apic_id;
	uint64_t stack_base, stack_top; /* the kernel stack */
	struct cpu_work *volatile work;  /* posted, not yet taken */
	volatile KIRQL irql;             /* CR8 as this CPU last set it, for the other CPUs to read */
	/* TLB shootdown (mm/tlb.c): this CPU's request when it initiates one, and who asked it. */
	volatile uint64_t shootdown_va;
	volatile cpu_set_t shootdown_pending;
	volatile cpu_set_t shootdown_from;
	/* Trap state (kernel/trap.c). */
	unsigned traps_entered;
	struct absorbed_fault last_absorbed_fault;
};

extern struct cpu cpus[MAX_CPUS];
extern volatile cpu_set_t cpus_online;
extern unsigned cpu_count; /* CPUs online: 0 .. cpu_count - 1 */

static inline struct cpu *this_cpu(void)
{
	struct cpu *c;
	asm volatile("mov %%gs:0, %0" : "=r"(c));
	return c;
}

static inline unsigned cpus_in_set(uint64_t set)
{
	unsigned n = 0;
	for (; set; set &= set - 1)
		n++;
	return n;
}

static inline cpu_set_t cpus_other_than_me(void)
{
	return cpus_online & ~CPU_BIT(this_cpu()->index);
}

/* Early on the BSP: its struct cpu and %gs. */
void smp_init_bsp(void);
/* At boot, on the stub's identity map: reads the processors from the ACPI MADT the PVH start_info
 * points at (rsdp 0: none given, the BSP runs alone). */
void smp_discover(uint64_t rsdp_pa);
/* Once the kernel's tables, frames and local APIC are up: starts every AP the MADT listed. Only
 * a failure is printed at boot (an AP that did not come up); the rest waits for smp_report(). */
void smp_start_aps(void);
/* For the boot report: what the MADT listed, and which CPUs are online on which APIC IDs. */
void smp_report(void);

/* Posts work to another online CPU and wakes it; the CPU must have no work pending. */
void smp_post(unsigned cpu, struct cpu_work *work);
/* Waits, interrupts enabled, until work is done, running work posted to this CPU meanwhile. */
void smp_wait(struct cpu_work *work);
/* Posts and waits. */
void smp_run_on(unsigned cpu, void (*run)(void *argument), void *argument);

/* The bugcheck path: stops every other CPU (an NMI each), waits a bounded time for them, and
 * returns the ones that froze. */
cpu_set_t smp_stop_others(void);
/* True once a CPU has begun to stop the machine: an NMI then means "freeze". */
bool smp_stopping(void);
NORETURN void smp_freeze(void);
/* Claims the stop for this CPU; false when another CPU stops the machine already. */
bool smp_claim_stop(void);
