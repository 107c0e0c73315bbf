/* What the CPU offers (CPUID) and what this kernel turned on. */
#pragma once
#include <stdbool.h>

struct cpu_features {
	bool nx, pge, pat, smep, smap, pdpe1gb, la57, apic;
	bool hypervisor; /* CPUID.1:ECX[31]: an emulated or virtual CPU */
};

extern struct cpu_features cpu; /* the BSP's; every AP must have the same */

struct cpu_features cpu_features_read(void);
bool cpu_features_equal(struct cpu_features a, struct cpu_features b);
void cpu_detect(void);
/* PGE, SMEP, SMAP and IA32_PAT, each only when CPUID has it (the stub or the AP trampoline did
 * PAE, LA57, LME, NXE). Every CPU runs it. */
void cpu_enable_features(void);
