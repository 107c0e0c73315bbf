#include "irql.h"
#include "bugcodes.h"
#include "ntddk.h"
#include "smp.h"

static void write_cr8(KIRQL irql)
{
	asm volatile("mov %0, %%cr8" ::"r"((uint64_t)irql) : "memory");
	this_cpu()->irql = irql;
}

void KeRaiseIrql(KIRQL NewIrql, KIRQL *OldIrql)
{
	KIRQL current = KeGetCurrentIrql();
	if (NewIrql < current || NewIrql > HIGH_LEVEL)
		KeBugCheckEx(IRQL_NOT_GREATER_OR_EQUAL, current, NewIrql, 0, 0);
	write_cr8(NewIrql);
	*OldIrql = current;
}

void KeLowerIrql(KIRQL NewIrql)
{
	KIRQL current = KeGetCurrentIrql();
	if (NewIrql > current)
		KeBugCheckEx(IRQL_NOT_LESS_OR_EQUAL, NewIrql, current, 0, 0);
	write_cr8(NewIrql);
}

void verifier_violation(uint64_t subcode, uint64_t p2, uint64_t p3, uint64_t p4)
{
	KeBugCheckEx(DRIVER_VERIFIER_DETECTED_VIOLATION, subcode, p2, p3, p4);
}

void verifier_require_irql_at_most(KIRQL max)
{
	KIRQL irql = KeGetCurrentIrql();
	if (irql > max)
		verifier_violation(VERIFIER_API_WRONG_IRQL, irql, 0, 0);
}
