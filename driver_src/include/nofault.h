/*
 * Accesses that may fault without stopping the kernel (MmCopyMemory, probes of user memory).
 * Each instruction allowed to fault has an entry in the .ex_table section pairing its address
 * with a resume address; the #PF and #GP handlers look the faulting RIP up there and, on a hit,
 * resume at the fixup instead of bugchecking.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "compiler.h"

struct exception_fixup {
	uint64_t fault_rip, resume_rip;
};

/* The resume address for a fault at rip, or 0 when the fault is not expected there. */
uint64_t exception_fixup_for(uint64_t rip);

/* Copies n bytes in order; returns how many were NOT copied (0: all), stopping at the first fault. */
MUST_USE size_t copy_nofault(void *dst, const void *src, size_t n);

/* The last fault a fixup absorbed on a CPU (struct cpu, smp.h): where, and the #PF error code (0
 * for #GP). */
struct absorbed_fault {
	uint64_t vector, address, error;
};
