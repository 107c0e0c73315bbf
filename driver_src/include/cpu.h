/* What the CPU offers (CPUID) and what this kernel turned on. */
#pragma once
#include <stdbool.h>

struct cpu_features {
	bool nx, pge, pat, smep, smap, pdpe1gb, la57, apic;
};

extern struct cpu_features cpu;

void cpu_detect(void);
/* PGE, SMEP, SMAP and IA32_PAT, each only when CPUID has it (the stub did PAE, LA57, LME, NXE). */
void cpu_enable_features(void);
