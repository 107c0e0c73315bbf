/*
 * Spinlocks with KeAcquireSpinLock's semantics: the caller's IRQL is raised to DISPATCH_LEVEL
 * (IRQL_NOT_GREATER_OR_EQUAL from above it, as NT), then the lock is taken. A CPU that has to spin
 * does so with interrupts enabled, so a TLB shootdown from the lock's holder still reaches it.
 * [DECISION] Taking a lock this CPU already holds would spin forever: it stops with
 * SPIN_LOCK_ALREADY_OWNED (P1 the lock, P2 the CPU).
 */
#include "bugcodes.h"
#include "ntddk.h"
#include "smp.h"
#include "x86.h"

static bool try_take(PKSPIN_LOCK lock, KSPIN_LOCK owner)
{
	KSPIN_LOCK free = 0;
	return __atomic_compare_exchange_n(lock, &free, owner, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void KeAcquireSpinLock(PKSPIN_LOCK SpinLock, PKIRQL OldIrql)
{
	KeRaiseIrql(DISPATCH_LEVEL, OldIrql);
	KSPIN_LOCK owner = this_cpu()->index + 1;
	if (try_take(SpinLock, owner))
		return;
	if (__atomic_load_n(SpinLock, __ATOMIC_RELAXED) == owner)
		KeBugCheckEx(SPIN_LOCK_ALREADY_OWNED, (ULONG_PTR)SpinLock, owner - 1, 0, 0);
	uint64_t flags = interrupts_save_enable();
	do {
		while (__atomic_load_n(SpinLock, __ATOMIC_RELAXED))
			cpu_relax();
	} while (!try_take(SpinLock, owner));
	interrupts_restore(flags);
}

void KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql)
{
	__atomic_store_n(SpinLock, 0, __ATOMIC_RELEASE);
	KeLowerIrql(NewIrql);
}
