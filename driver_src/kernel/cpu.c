#include "cpu.h"
#include "paging.h"
#include "x86.h"

struct cpu_features cpu;

static bool has(uint32_t reg, unsigned bit)
{
	return reg >> bit & 1;
}

void cpu_detect(void)
{
	uint32_t max_leaf = cpuid(0, 0).eax;
	struct cpuid_regs leaf1 = cpuid(1, 0);
	struct cpuid_regs leaf7 = max_leaf >= 7 ? cpuid(7, 0) : (struct cpuid_regs){0};
	struct cpuid_regs ext = cpuid(0x80000001, 0); /* the stub checked it exists */

	cpu.pge = has(leaf1.edx, CPUID_1_EDX_PGE);
	cpu.pat = has(leaf1.edx, CPUID_1_EDX_PAT);
	cpu.apic = has(leaf1.edx, CPUID_1_EDX_APIC);
	cpu.smep = has(leaf7.ebx, CPUID_7_EBX_SMEP);
	cpu.smap = has(leaf7.ebx, CPUID_7_EBX_SMAP);
	cpu.la57 = has(leaf7.ecx, CPUID_7_ECX_LA57);
	cpu.nx = has(ext.edx, CPUID_EXT_EDX_NX);
	cpu.pdpe1gb = has(ext.edx, CPUID_EXT_EDX_PDPE1GB);
}

void cpu_enable_features(void)
{
	/* Writing a CR4 bit the CPU model lacks hangs TCG forever: every bit is gated on CPUID. */
	uint64_t cr4 = read_cr4();
	if (cpu.pge)
		cr4 |= CR4_PGE;
	if (cpu.smep)
		cr4 |= CR4_SMEP;
	if (cpu.smap)
		cr4 |= CR4_SMAP; /* no user mappings exist, so nothing legitimate trips it */
	write_cr4(cr4);
	if (cpu.pat)
		wrmsr(MSR_PAT, PAT_VALUE);
}
