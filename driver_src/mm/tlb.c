/*
 * TLB flushes: the local INVLPG, and the shootdown that makes the other CPUs drop a translation
 * (KeFlushSingleTb's job on NT). Each CPU has one request slot as initiator (its shootdown_va and
 * the set of CPUs still to answer) and a set of initiators that asked it, so two CPUs can shoot
 * down at once: each waits with interrupts enabled and serves the other's request meanwhile. The
 * interrupt handler takes no lock: it only flushes, clears its own bit in each initiator's set, and
 * wakes the initiator when its bit was the last.
 */
#include "bugcodes.h"
#include "local_apic.h"
#include "ntddk.h"
#include "pagetable.h"
#include "smp.h"
#include "x86.h"

#define SHOOTDOWN_TIMEOUT_TICKS (5 * TSC_ASSUMED_HZ)
/* How long an initiator spins before it halts until the last CPU to flush wakes it: vCPUs share few
 * host cores, and a spinning vCPU holds a core the CPUs it waits for need. */
#define SHOOTDOWN_SPIN_TICKS BIT(14)

static uint64_t remote_flushes_to_skip;

static void shoot_down(uint64_t va, cpu_set_t targets)
{
	struct cpu *me = this_cpu();
	me->shootdown_va = va;
	__atomic_store_n(&me->shootdown_pending, targets, __ATOMIC_RELEASE);
	for (unsigned k = 0; k < cpu_count; k++) {
		if (!(targets & CPU_BIT(k)))
			continue;
		__atomic_or_fetch(&cpus[k].shootdown_from, CPU_BIT(me->index), __ATOMIC_SEQ_CST);
		local_apic_send_fixed(cpus[k].apic_id, TLB_SHOOTDOWN_VECTOR);
	}
	uint64_t start = rdtsc();
	uint64_t flags = interrupts_save_disable(); /* off only between a check and the halt */
	cpu_set_t pending;
	while ((pending = __atomic_load_n(&me->shootdown_pending, __ATOMIC_ACQUIRE))) {
		uint64_t waited = rdtsc() - start;
		if (waited > SHOOTDOWN_TIMEOUT_TICKS)
			KeBugCheckEx(IPI_WATCHDOG_TIMEOUT, TSC_ASSUMED_HZ, start + waited, start, pending);
		if (waited > SHOOTDOWN_SPIN_TICKS && KeGetCurrentIrql() < HIGH_LEVEL) {
			halt_until_interrupt(); /* the last CPU to flush sends WAKE_VECTOR */
		} else {
			asm volatile("sti" ::: "memory");
			cpu_relax();
			asm volatile("cli" ::: "memory");
		}
	}
	interrupts_restore(flags);
}

void tlb_shootdown_interrupt(void)
{
	struct cpu *me = this_cpu();
	cpu_set_t from = __atomic_exchange_n(&me->shootdown_from, 0, __ATOMIC_ACQUIRE);
	for (unsigned k = 0; from; k++) {
		if (!(from & CPU_BIT(k)))
			continue;
		from &= ~CPU_BIT(k);
		invlpg(cpus[k].shootdown_va);
		if (!__atomic_and_fetch(&cpus[k].shootdown_pending, ~CPU_BIT(me->index), __ATOMIC_ACQ_REL))
			local_apic_send_fixed(cpus[k].apic_id, WAKE_VECTOR); /* the initiator may have halted */
	}
}

static bool skip_this_remote_flush(void)
{
	uint64_t left = __atomic_load_n(&remote_flushes_to_skip, __ATOMIC_RELAXED);
	while (left && !__atomic_compare_exchange_n(&remote_flushes_to_skip, &left, left - 1, false, __ATOMIC_SEQ_CST,
						     __ATOMIC_RELAXED))
		;
	return left != 0;
}

/* One INVLPG drops the translation of the whole page containing va, whatever its size. */
void tlb_flush(struct tlb_flush token)
{
	if (!token.changed || !token.live)
		return;
	invlpg(token.va);
	cpu_set_t others = token.cpus & ~CPU_BIT(this_cpu()->index);
	if (others && !skip_this_remote_flush())
		shoot_down(token.va, others);
}

void tlb_flush_not_needed(struct tlb_flush token)
{
	if (token.was_present)
		KeBugCheckEx(MEMORY_MANAGEMENT, MM_CORRUPTED_PTE, 0, 0, token.va);
}

void tlb_skip_remote_flushes(uint64_t count)
{
	__atomic_store_n(&remote_flushes_to_skip, count, __ATOMIC_SEQ_CST);
}
