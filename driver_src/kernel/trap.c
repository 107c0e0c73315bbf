#include "trap.h"
#include "bugcheck.h"
#include "bugcodes.h"
#include "irql.h"
#include "kstring.h"
#include "layout.h"
#include "nofault.h"
#include "pagetable.h"
#include "raw_access.h"
#include "smp.h"
#include "usermode.h"
#include "x86.h"

enum vector {
	VECTOR_NMI = 2,
	VECTOR_DOUBLE_FAULT = 8,
	VECTOR_GENERAL_PROTECTION = 13,
	VECTOR_PAGE_FAULT = 14,
	VECTOR_MACHINE_CHECK = 18,
	EXCEPTION_VECTORS = FIRST_INTERRUPT_VECTOR,
};

/* IST slots: #DF (a kernel stack overflow lands here), NMI and #MC run on stacks of their own. */
enum ist { IST_DOUBLE_FAULT = 1, IST_NMI, IST_MACHINE_CHECK, IST_COUNT = 3 };
#define IST_STACK_SIZE 0x2000

struct PACKED tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3, iomap_base;
};

struct PACKED idt_gate {
	uint16_t offset_low, selector;
	uint8_t ist, type;
	uint16_t offset_mid;
	uint32_t offset_high, reserved;
};

struct PACKED table_register {
	uint16_t limit;
	uint64_t base;
};

#define GATE_INTERRUPT_DPL0 0x8E
#define RING0_STACK_SIZE 0x2000
#define TSS_AVAILABLE 0x89

#define GDT_ENTRIES 7

/* Each CPU has its own GDT and TSS (a busy TSS cannot be shared); the IDT is common. */
static struct tss tss[MAX_CPUS];
static uint64_t gdt[MAX_CPUS][GDT_ENTRIES];
static struct idt_gate idt[IDT_VECTORS];
/* The BSP's IST stacks and ring-0 stack (TSS RSP0: where ring 3 enters the kernel); the APs' are
 * mapped with guard pages in their stack slots (layout.h). */
static uint8_t ist_stacks[IST_COUNT][IST_STACK_SIZE] ALIGNED(16);
static uint8_t ring0_stack[RING0_STACK_SIZE] ALIGNED(16);
/* null, 64-bit code, data (accessed bits preset), the 16-byte TSS descriptor, ring-3 data and code. */
static const uint64_t gdt_template[GDT_ENTRIES] = {
	0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0, 0, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF};
_Static_assert(GDT_USER_DATA / 8 == 5 && GDT_USER_CODE / 8 == 6, "ring-3 descriptors");
_Static_assert(IST_STACK_SIZE == CPU_AUX_STACK_SIZE && RING0_STACK_SIZE == CPU_AUX_STACK_SIZE, "AP stacks");
_Static_assert(CPU_AUX_STACKS == 1 + IST_COUNT, "an AP's ring-0 stack and IST stacks");
extern const uint64_t trap_entry_points[EXCEPTION_VECTORS];
extern const uint64_t interrupt_entry_points[IDT_VECTORS - FIRST_INTERRUPT_VECTOR];

static void set_tss_descriptor(unsigned cpu)
{
	uint64_t base = (uint64_t)&tss[cpu], limit = sizeof(tss[cpu]) - 1;
	gdt[cpu][GDT_TSS / 8] = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | (uint64_t)TSS_AVAILABLE << 40 |
				(limit >> 16 & 0xF) << 48 | (base >> 24 & 0xFF) << 56;
	gdt[cpu][GDT_TSS / 8 + 1] = base >> 32;
}

static uint8_t ist_for(unsigned vector)
{
	switch (vector) {
	case VECTOR_DOUBLE_FAULT: return IST_DOUBLE_FAULT;
	case VECTOR_NMI: return IST_NMI;
	case VECTOR_MACHINE_CHECK: return IST_MACHINE_CHECK;
	default: return 0;
	}
}

/* This CPU's GDT (with its TSS), its segment registers, its task register and the shared IDT. */
static void load_tables(unsigned cpu)
{
	memcpy(gdt[cpu], gdt_template, sizeof(gdt_template));
	tss[cpu].iomap_base = sizeof(tss[cpu]);
	set_tss_descriptor(cpu);
	struct table_register gdtr = {sizeof(gdt[cpu]) - 1, (uint64_t)gdt[cpu]};
	struct table_register idtr = {sizeof(idt) - 1, (uint64_t)idt};
	asm volatile("lgdt %0\n\t"
		     "pushq %2\n\t"
		     "leaq 1f(%%rip), %%rax\n\t"
		     "pushq %%rax\n\t"
		     "lretq\n"
		     "1:\n\t"
		     "mov %3, %%ds\n\t"
		     "mov %3, %%es\n\t"
		     "mov %3, %%ss\n\t"
		     "ltr %w4\n\t"
		     "lidt %1"
		     :
		     : "m"(gdtr), "m"(idtr), "i"(GDT_KERNEL_CODE), "r"(GDT_KERNEL_DATA), "r"(GDT_TSS)
		     : "rax", "memory");
}

void trap_init_ap(unsigned cpu)
{
	tss[cpu].rsp[0] = CPU_AUX_STACK_BASE(cpu, 0) + CPU_AUX_STACK_SIZE;
	for (unsigned i = 0; i < IST_COUNT; i++)
		tss[cpu].ist[i] = CPU_AUX_STACK_BASE(cpu, 1 + i) + CPU_AUX_STACK_SIZE;
	load_tables(cpu);
}

void trap_init(void)
{
	for (unsigned i = 0; i < IST_COUNT; i++)
		tss[0].ist[i] = (uint64_t)ist_stacks[i] + IST_STACK_SIZE;
	tss[0].rsp[0] = (uint64_t)ring0_stack + RING0_STACK_SIZE;
	for (unsigned v = 0; v < IDT_VECTORS; v++) {
		uint64_t entry = v < EXCEPTION_VECTORS ? trap_entry_points[v]
						       : interrupt_entry_points[v - FIRST_INTERRUPT_VECTOR];
		idt[v] = (struct idt_gate){
			.offset_low = (uint16_t)entry,
			.selector = GDT_KERNEL_CODE,
			.ist = ist_for(v),
			.type = GATE_INTERRUPT_DPL0,
			.offset_mid = (uint16_t)(entry >> 16),
			.offset_high = (uint32_t)(entry >> 32),
		};
	}
	load_tables(0);
}

/* Exceptions NT turns into an exception record (KMODE_EXCEPTION_NOT_HANDLED); 0: a plain trap. */
static const uint32_t exception_status[EXCEPTION_VECTORS] = {
	[0] = STATUS_INTEGER_DIVIDE_BY_ZERO,
	[1] = STATUS_SINGLE_STEP,
	[3] = STATUS_BREAKPOINT,
	[4] = STATUS_INTEGER_OVERFLOW,
	[5] = STATUS_ARRAY_BOUNDS_EXCEEDED,
	[6] = STATUS_ILLEGAL_INSTRUCTION,
	[13] = STATUS_ACCESS_VIOLATION,
	[16] = STATUS_FLOAT_MULTIPLE_FAULTS,
	[17] = STATUS_DATATYPE_MISALIGNMENT,
	[19] = STATUS_FLOAT_MULTIPLE_TRAPS,
};

static void set_stop(struct bugcheck *b, uint32_t code, uint64_t p1, uint64_t p2, uint64_t p3, uint64_t p4)
{
	b->code = code;
	b->parameters[0] = p1;
	b->parameters[1] = p2;
	b->parameters[2] = p3;
	b->parameters[3] = p4;
}

/* IRQL_NOT_LESS_OR_EQUAL P3: bit 0 a write, bit 3 an instruction fetch. */
#define IRQL_FAULT_WRITE 0x1
#define IRQL_FAULT_EXECUTE 0x8

/* ddi-spec §13 [DECISION]: which stop a kernel #PF raises. */
static void classify_page_fault(struct bugcheck *b, const struct trap_frame *f)
{
	uint64_t va = b->cr2;
	uint64_t access = f->error & (PF_ERR_W | PF_ERR_ID); /* 0 read, 2 write, 0x10 execute */
	struct pt_view live = pt_live();
	struct pt_walk walk = pt_walk(&live, va);
	KIRQL irql = KeGetCurrentIrql();

	if (f->error & PF_ERR_RSVD) /* TCG reports 0x8 without P; the entry is corrupt either way */
		set_stop(b, MEMORY_MANAGEMENT, MM_CORRUPTED_PTE, (uint64_t)walk.slot, walk.entry, va);
	else if (!(f->error & PF_ERR_P) && irql >= DISPATCH_LEVEL) /* no driver images here: never 0xD1 */
		set_stop(b, IRQL_NOT_LESS_OR_EQUAL, va, irql,
			 (f->error & PF_ERR_W ? IRQL_FAULT_WRITE : 0) | (f->error & PF_ERR_ID ? IRQL_FAULT_EXECUTE : 0),
			 f->rip);
	else if (!(f->error & PF_ERR_P))
		set_stop(b, PAGE_FAULT_IN_NONPAGED_AREA, va, access, f->rip,
			 walk.stop == PT_NOT_PRESENT && walk.level > 1 ? PF_TYPE_TABLE_NOT_PRESENT : PF_TYPE_FREED_PTE);
	else if (f->error & PF_ERR_ID) /* NX, or SMEP on a user page */
		set_stop(b, ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, va, walk.entry, 0, 0);
	else if (walk.entry & PTE_US) /* SMAP: the kernel touched a user page without STAC (docs/ddi/usermode.md) */
		set_stop(b, PAGE_FAULT_IN_NONPAGED_AREA, va, access, f->rip, PF_TYPE_ACCESS_INCONSISTENT);
	else if (f->error & PF_ERR_W)
		set_stop(b, ATTEMPTED_WRITE_TO_READONLY_MEMORY, va, walk.entry, 0, 0);
	else /* a present page refused for another reason (protection keys) */
		set_stop(b, PAGE_FAULT_IN_NONPAGED_AREA, va, access, f->rip, PF_TYPE_ACCESS_INCONSISTENT);
}

/* A non-canonical address raises #GP, which names no address; a raw access knows its own. */
static void classify_general_protection(struct bugcheck *b, const struct trap_frame *f)
{
	uint64_t va;
	bool write;
	if (raw_access_non_canonical(&va, &write))
		set_stop(b, PAGE_FAULT_IN_NONPAGED_AREA, va, write ? PF_ERR_W : 0, f->rip, PF_TYPE_NON_CANONICAL);
	else /* NT: read access, address unknown */
		set_stop(b, KMODE_EXCEPTION_NOT_HANDLED, STATUS_ACCESS_VIOLATION, f->rip, 0, ~0ull);
}

static NORETURN void trap_bugcheck(struct trap_frame *f)
{
	struct cpu *me = this_cpu();
	struct bugcheck b = {
		.rip = f->rip,
		.cr3 = read_cr3(),
		.cpu = me->index,
		.from_exception = true,
		.vector = f->vector,
		.error = f->error,
		.cr2 = read_cr2(),
	};
	if (++me->traps_entered > 1) /* faulted while classifying a fault (a broken self-map?): no more walks */
		set_stop(&b, UNEXPECTED_KERNEL_MODE_TRAP, f->vector, 0, 0, 0);
	else if (f->vector == VECTOR_PAGE_FAULT)
		classify_page_fault(&b, f);
	else if (f->vector == VECTOR_GENERAL_PROTECTION)
		classify_general_protection(&b, f);
	else if (f->vector == VECTOR_NMI)
		set_stop(&b, NMI_HARDWARE_FAILURE, 0, 0, 0, 0);
	else if (f->vector == VECTOR_MACHINE_CHECK)
		set_stop(&b, MACHINE_CHECK_EXCEPTION, 0, 0, 0, 0);
	else if (f->vector < EXCEPTION_VECTORS && exception_status[f->vector])
		set_stop(&b, KMODE_EXCEPTION_NOT_HANDLED, exception_status[f->vector], f->rip, 0, 0);
	else
		set_stop(&b, UNEXPECTED_KERNEL_MODE_TRAP, f->vector, 0, 0, 0);
	bugcheck_stop(&b);
}

void trap_handle(struct trap_frame *f)
{
	if (f->vector == VECTOR_NMI && smp_stopping()) /* another CPU stops the machine */
		smp_freeze();
	if (f->cs & 3) /* ring 3 faulted: the probe's result, never a stop */
		usermode_fault(f, f->vector == VECTOR_PAGE_FAULT ? read_cr2() : 0);
	if (f->vector == VECTOR_PAGE_FAULT || f->vector == VECTOR_GENERAL_PROTECTION) {
		uint64_t resume = exception_fixup_for(f->rip);
		if (resume) {
			this_cpu()->last_absorbed_fault = (struct absorbed_fault){
				.vector = f->vector,
				.address = f->vector == VECTOR_PAGE_FAULT ? read_cr2() : 0,
				.error = f->error,
			};
			f->rip = resume;
			return;
		}
	}
	trap_bugcheck(f);
}
