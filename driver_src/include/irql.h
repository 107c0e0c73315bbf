/*
 * IRQL on x64 is CR8 (ddi-spec §14.8): IRQL n masks interrupt priority classes 1..n. The agent's
 * COM2 interrupt arrives as ExtINT, which the TPR does not mask, so the agent keeps serving at any
 * IRQL and tests can call DDIs at PASSIVE, APC, DISPATCH or HIGH.
 */
#pragma once
#include <stdint.h>
#include "compiler.h"

typedef uint8_t KIRQL;

#define PASSIVE_LEVEL 0
#define APC_LEVEL 1
#define DISPATCH_LEVEL 2
#define HIGH_LEVEL 15

static inline KIRQL KeGetCurrentIrql(void)
{
	uint64_t cr8;
	asm volatile("mov %%cr8, %0" : "=r"(cr8));
	return (KIRQL)cr8;
}

/* NT: raising below the current IRQL bugchecks IRQL_NOT_GREATER_OR_EQUAL (P1 current, P2 new). */
void KeRaiseIrql(KIRQL NewIrql, KIRQL *OldIrql);
/* [DECISION] lowering above the current IRQL, or to a level above HIGH_LEVEL, bugchecks
 * IRQL_NOT_LESS_OR_EQUAL with P1 the new IRQL, P2 the current one, P3 and P4 zero. */
void KeLowerIrql(KIRQL NewIrql);

/* Driver Verifier's DRIVER_VERIFIER_DETECTED_VIOLATION (0xC4) with the given subcode. */
NORETURN void verifier_violation(uint64_t subcode, uint64_t p2, uint64_t p3, uint64_t p4);
/* The generic 0xC4(0xE5, irql, 0, 0) when the current IRQL is above max. */
void verifier_require_irql_at_most(KIRQL max);
