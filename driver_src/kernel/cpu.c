#include "cpu.h"
#include "paging.h"
#include "x86.h"

struct cpu_features cpu;

static bool has(uint32_t reg, unsigned bit)
{
	return reg >> bit & 1;
}

struct cpu_features cpu_features_read(void)
{
	uint32_t max_leaf = cpuid(0, 0).eax;
	struct cpuid_regs leaf1 = cpuid(1, 0);
	struct cpuid_regs leaf7 = max_leaf >= 7 ? cpuid(7, 0) : (struct cpuid_regs){0};
	struct cpuid_regs ext = cpuid(0x80000001, 0); /* the stub checked it exists */

	return (struct cpu_features){
		.pge = has(leaf1.edx, CPUID_1_EDX_PGE),
		.pat = has(leaf1.edx, CPUID_1_EDX_PAT),
		.apic = has(leaf1.edx, CPUID_1_EDX_APIC),
		.hypervisor = has(leaf1.ecx, CPUID_1_ECX_HYPERVISOR),
		.smep = has(leaf7.ebx, CPUID_7_EBX_SMEP),
		.smap = has(leaf7.ebx, CPUID_7_EBX_SMAP),
		.la57 = has(leaf7.ecx, CPUID_7_ECX_LA57),
		.nx = has(ext.edx, CPUID_EXT_EDX_NX),
		.pdpe1gb = has(ext.edx, CPUID_EXT_EDX_PDPE1GB),
	};
}

void cpu_detect(void)
{
	cpu = cpu_features_read();
}

bool cpu_features_equal(struct cpu_features a, struct cpu_features b)
{
	return a.nx == b.nx && a.pge == b.pge && a.pat == b.pat && a.smep == b.smep && a.smap == b.smap &&
	       a.pdpe1gb == b.pdpe1gb && a.la57 == b.la57 && a.apic == b.apic &&
	       a.hypervisor == b.hypervisor;
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
