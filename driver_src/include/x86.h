/* x86 registers, MSRs, CPUID bits and I/O ports this kernel uses (paging bits: paging.h). */
#pragma once
#include "const.h"

#define CR0_WP BIT(16) /* supervisor writes honour read-only pages */
#define CR0_PG BIT(31)
#define CR4_PAE BIT(5)
#define CR4_PGE BIT(7)
#define CR4_LA57 BIT(12)
#define CR4_SMEP BIT(20)
#define CR4_SMAP BIT(21)
#define MSR_EFER 0xC0000080
#define EFER_LME BIT(8)
#define EFER_NXE BIT(11)
#define MSR_PAT 0x277
#define MSR_APIC_BASE 0x1B /* bits 12..51: the local APIC's register page */
#define MSR_GS_BASE 0xC0000101
#define RFLAGS_IF BIT(9)

/* CPUID feature bits, as bit numbers in the named leaf's register. */
#define CPUID_1_ECX_HYPERVISOR 31
#define CPUID_1_EDX_APIC 9
#define CPUID_1_EDX_PGE 13
#define CPUID_1_EDX_PAT 16
#define CPUID_7_EBX_SMEP 7
#define CPUID_7_EBX_SMAP 20
#define CPUID_7_ECX_LA57 16
#define CPUID_EXT_EDX_NX 20
#define CPUID_EXT_EDX_PDPE1GB 26
#define CPUID_EXT_EDX_LM 29

#define COM1_PORT 0x3F8
#define COM2_PORT 0x2F8
#define COM2_IRQ 3                  /* its ISA IRQ (the harness: isa-serial irq=3) */
#define DEBUG_EXIT_PORT 0xF4        /* isa-debug-exit: QEMU exits with status (value << 1) | 1 */
#define DEBUG_EXIT_BUGCHECK 0x10    /* status 33: a bugcheck record precedes it */
#define DEBUG_EXIT_FIRMWARE 0x20    /* status 65: the mmhil firmware could not boot; COM1 says why */
#define PVPANIC_PORT 0x505          /* QEMU's ISA pvpanic device (absent: the write goes nowhere) */
#define PVPANIC_PANICKED 0x01       /* the guest panicked: QEMU reports GUEST_PANICKED */

/* Vectors 0-31 are the CPU's exceptions; 32-255 are interrupts. */
#define FIRST_INTERRUPT_VECTOR 32
#define IDT_VECTORS 256

#define GDT_KERNEL_CODE 0x08
#define GDT_KERNEL_DATA 0x10
#define GDT_TSS 0x18 /* 16 bytes */
#define GDT_USER_DATA 0x28 /* ring 3: NT's KGDT64_R3_DATA and KGDT64_R3_CODE */
#define GDT_USER_CODE 0x30

#ifndef __ASSEMBLER__
#include <stdint.h>
#include "compiler.h"

struct cpuid_regs {
	uint32_t eax, ebx, ecx, edx;
};

static inline struct cpuid_regs cpuid(uint32_t leaf, uint32_t subleaf)
{
	struct cpuid_regs r;
	asm volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
	return r;
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return (uint64_t)hi << 32 | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t value)
{
	asm volatile("wrmsr" ::"c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)) : "memory");
}

#define DEFINE_CR_READ(n) \
	static inline uint64_t read_cr##n(void) \
	{ \
		uint64_t v; \
		asm volatile("mov %%cr" #n ", %0" : "=r"(v)); \
		return v; \
	}
DEFINE_CR_READ(0)
DEFINE_CR_READ(2)
DEFINE_CR_READ(3)
DEFINE_CR_READ(4)
#undef DEFINE_CR_READ

static inline void write_cr4(uint64_t v)
{
	asm volatile("mov %0, %%cr4" ::"r"(v) : "memory");
}

static inline uint64_t read_rsp(void)
{
	uint64_t v;
	asm volatile("mov %%rsp, %0" : "=r"(v));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

static inline void invlpg(uint64_t va)
{
	asm volatile("invlpg (%0)" ::"r"(va) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void outb(uint16_t port, uint8_t v)
{
	asm volatile("outb %0, %1" ::"a"(v), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t v)
{
	asm volatile("outw %0, %1" ::"a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
	asm volatile("outl %0, %1" ::"a"(v), "Nd"(port));
}

/* A spin-wait hint: under TCG it also ends the translation block, so QEMU's other work runs. */
static inline void cpu_relax(void)
{
	asm volatile("pause" ::: "memory");
}

/*
 * The kernel runs with interrupts off; it takes them only while it waits (here, and in the waits of
 * smp.h). STI delays them by one instruction, so one that became pending after the caller's last
 * check still wakes the HLT instead of being taken before it (and slept through).
 */
static inline void halt_until_interrupt(void)
{
	asm volatile("sti; hlt; cli" ::: "memory");
}

/* Interrupts enabled or disabled around a wait or a short sequence; the old RFLAGS restores them. */
static inline uint64_t interrupts_save_enable(void)
{
	uint64_t flags;
	asm volatile("pushfq; pop %0; sti" : "=r"(flags) : : "memory");
	return flags;
}

static inline uint64_t interrupts_save_disable(void)
{
	uint64_t flags;
	asm volatile("pushfq; pop %0; cli" : "=r"(flags) : : "memory");
	return flags;
}

static inline void interrupts_restore(uint64_t flags)
{
	if (flags & RFLAGS_IF)
		asm volatile("sti" ::: "memory");
	else
		asm volatile("cli" ::: "memory");
}

static inline NORETURN void halt_forever(void)
{
	for (;;)
		asm volatile("cli; hlt");
}
#endif
