/* Processors: discovery, INIT-SIPI-SIPI start-up, work handed between CPUs, the stop (smp.h). */
#include "smp.h"
#include "acpi.h"
#include "bootinfo.h"
#include "bugcodes.h"
#include "console.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "local_apic.h"
#include "ntddk.h"
#include "pagetable.h"
#include "trap.h"
#include "x86.h"

struct cpu cpus[MAX_CPUS];
volatile cpu_set_t cpus_online;
unsigned cpu_count = 1;

static uint32_t listed_apic_ids[MAX_CPUS];
static unsigned listed_count;
static const char *alone_because; /* why no AP was started, when the MADT listed others */

/* MP spec: INIT, 10 ms, SIPI, 200 us, SIPI. An AP that is not up 2 s after its SIPIs stays off.
 * The 10 ms is for the discrete APICs of old boards. An emulated AP waits for its SIPI as soon as
 * INIT lands, so on a hypervisor the SIPIs follow at once (10 ms was most of a 4-CPU boot). */
#define INIT_DELAY_TICKS (TSC_ASSUMED_HZ / 100)
#define STARTUP_DELAY_TICKS (TSC_ASSUMED_HZ / 5000)
#define ONLINE_TIMEOUT_TICKS (2 * TSC_ASSUMED_HZ)
#define STOP_TIMEOUT_TICKS (TSC_ASSUMED_HZ / 10)

/* What ap_entry (boot/ap_start.S) loads: the layout is the assembly's. */
struct ap_boot {
	uint64_t cr3, stack_top;
	struct cpu *cpu;
};
struct ap_boot ap_boot;

extern char ap_trampoline_start[], ap_trampoline_end[];
extern uint32_t ap_trampoline_cr0[], ap_trampoline_cr3[], ap_trampoline_cr4[], ap_trampoline_efer[];
extern char boot_pml4[], boot_pml5[];
NORETURN void ap_main(struct cpu *c);

static volatile int stopping_cpu = -1;
static volatile cpu_set_t cpus_frozen;

void smp_init_bsp(void)
{
	struct cpu *c = &cpus[0];
	*c = (struct cpu){.self = c, .index = 0, .stack_base = KERNEL_STACK_BASE, .stack_top = KERNEL_STACK_TOP};
	wrmsr(MSR_GS_BASE, (uint64_t)c);
	cpus_online = CPU_BIT(0);
}

void smp_discover(uint64_t rsdp_pa)
{
	listed_count = acpi_processor_apic_ids(rsdp_pa, listed_apic_ids, MAX_CPUS, &alone_because);
}

static void delay(uint64_t ticks)
{
	uint64_t start = rdtsc();
	while (rdtsc() - start < ticks)
		cpu_relax();
}

static bool is_online(unsigned index)
{
	return __atomic_load_n(&cpus_online, __ATOMIC_ACQUIRE) & CPU_BIT(index);
}

static bool wait_online(unsigned index, uint64_t ticks)
{
	uint64_t start = rdtsc();
	while (!is_online(index))
		if (rdtsc() - start >= ticks)
			return false;
		else
			cpu_relax();
	return true;
}

static void map_stack(uint64_t base, uint64_t size)
{
	struct pt_view live = pt_live();
	for (uint64_t va = base; va < base + size; va += PAGE_SIZE) {
		pfn_t pfn = frame_alloc(PFN_KERNEL_STACK);
		struct tlb_flush flush = pfn == PFN_NONE ? (struct tlb_flush){.changed = false}
			: pt_set(&live, va, 1, pte_kernel_leaf(pfn << PAGE_SHIFT, 1, PROT_READ_WRITE));
		if (!flush.changed)
			KeBugCheckEx(INSTALL_MORE_MEMORY, va, 1, pfn, 0);
		tlb_flush_not_needed(flush);
	}
}

static bool trampoline_page_is_ram(void)
{
	for (unsigned i = 0; i < boot_info.memmap_count; i++) {
		const struct memmap_entry *e = &boot_info.memmap[i];
		if (e->type == E820_RAM && e->base <= AP_TRAMPOLINE_PA && e->base + e->size >= AP_TRAMPOLINE_PA + PAGE_SIZE)
			return true;
	}
	return false;
}

/* The trampoline in its low page, with the paging state the BSP itself entered long mode with. */
static void install_trampoline(void)
{
	uint64_t size = (uint64_t)(ap_trampoline_end - ap_trampoline_start);
	char *page = phys_to_virt(AP_TRAMPOLINE_PA);
	memcpy(page, ap_trampoline_start, size);
	uint64_t root = image_virt_to_phys(paging_levels == 5 ? boot_pml5 : boot_pml4);
	*(uint32_t *)(page + ((char *)ap_trampoline_cr0 - ap_trampoline_start)) = (uint32_t)read_cr0();
	*(uint32_t *)(page + ((char *)ap_trampoline_cr3 - ap_trampoline_start)) = (uint32_t)root;
	*(uint32_t *)(page + ((char *)ap_trampoline_cr4 - ap_trampoline_start)) =
		(uint32_t)(CR4_PAE | (paging_levels == 5 ? CR4_LA57 : 0));
	*(uint32_t *)(page + ((char *)ap_trampoline_efer - ap_trampoline_start)) =
		(uint32_t)(EFER_LME | (cpu.nx ? EFER_NXE : 0));
}

/* Its stacks mapped, the AP gets its SIPIs; true once it reports itself online. */
static bool start_ap(unsigned index, uint32_t apic_id)
{
	struct cpu *c = &cpus[index];
	*c = (struct cpu){.self = c, .index = index, .apic_id = apic_id, .stack_base = CPU_KERNEL_STACK_BASE(index),
			  .stack_top = CPU_KERNEL_STACK_TOP(index)};
	map_stack(c->stack_base, KERNEL_STACK_SIZE);
	for (unsigned n = 0; n < CPU_AUX_STACKS; n++)
		map_stack(CPU_AUX_STACK_BASE(index, n), CPU_AUX_STACK_SIZE);
	ap_boot = (struct ap_boot){.cr3 = read_cr3(), .stack_top = c->stack_top, .cpu = c};
	asm volatile("" ::: "memory");
	for (unsigned sipi = 0; sipi < 2 && !is_online(index); sipi++) {
		local_apic_send_startup(apic_id, AP_TRAMPOLINE_PA);
		wait_online(index, STARTUP_DELAY_TICKS);
	}
	return wait_online(index, ONLINE_TIMEOUT_TICKS);
}

void smp_start_aps(void)
{
	if (listed_count <= 1)
		return;
	if (!cpu.apic || !trampoline_page_is_ram()) {
		alone_because = cpu.apic ? "the AP trampoline page is not RAM" : "no local APIC";
		kprintf("mmhil: smp: %s: the BSP runs alone\n", alone_because);
		return;
	}
	cpus[0].apic_id = local_apic_id();
	install_trampoline();
	for (unsigned i = 0; i < listed_count; i++)
		if (listed_apic_ids[i] != cpus[0].apic_id)
			local_apic_send_init(listed_apic_ids[i]);
	if (!cpu.hypervisor)
		delay(INIT_DELAY_TICKS);
	for (unsigned i = 0; i < listed_count && cpu_count < MAX_CPUS; i++) {
		uint32_t apic_id = listed_apic_ids[i];
		if (apic_id == cpus[0].apic_id)
			continue;
		if (start_ap(cpu_count, apic_id))
			cpu_count++;
		else
			kprintf("mmhil: smp: the processor with APIC ID %u did not come up\n", apic_id);
	}
}

void smp_report(void)
{
	if (listed_count) {
		kprintf("mmhil: smp: the MADT lists %u processor%s, APIC IDs", listed_count, listed_count > 1 ? "s" : "");
		for (unsigned i = 0; i < listed_count; i++)
			kprintf(" %u", listed_apic_ids[i]);
		kprintf("\n");
	}
	if (alone_because)
		kprintf("mmhil: smp: %s: the BSP runs alone\n", alone_because);
	kprintf("mmhil: smp: %u CPU%s online:", cpu_count, cpu_count > 1 ? "s" : "");
	for (unsigned k = 0; k < cpu_count; k++)
		kprintf(" cpu%u=apic%u", k, cpus[k].apic_id);
	kprintf("\n");
}

static bool run_posted_work(struct cpu *me)
{
	struct cpu_work *w = __atomic_exchange_n(&me->work, NULL, __ATOMIC_ACQUIRE);
	if (!w)
		return false;
	w->run(w->argument);
	unsigned poster = w->poster; /* w may be gone once done is set */
	__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	local_apic_send_fixed(cpus[poster].apic_id, WAKE_VECTOR);
	return true;
}

static bool is_done(const struct cpu_work *w)
{
	return w && __atomic_load_n(&w->done, __ATOMIC_ACQUIRE);
}

/*
 * The one way a CPU waits for another. With interrupts off between the checks and the halt, a wake
 * IPI sent after the last check is taken by the HLT itself (halt_until_interrupt). At HIGH_LEVEL the
 * wake vector is masked, so the CPU polls instead.
 */
void smp_wait(struct cpu_work *work)
{
	struct cpu *me = this_cpu();
	uint64_t flags = interrupts_save_disable();
	while (!is_done(work)) {
		if (run_posted_work(me))
			continue;
		if (KeGetCurrentIrql() < HIGH_LEVEL)
			halt_until_interrupt();
		else
			cpu_relax();
	}
	interrupts_restore(flags);
}

void smp_post(unsigned cpu, struct cpu_work *work)
{
	work->poster = this_cpu()->index;
	work->done = false;
	__atomic_store_n(&cpus[cpu].work, work, __ATOMIC_RELEASE);
	local_apic_send_fixed(cpus[cpu].apic_id, WAKE_VECTOR);
}

void smp_run_on(unsigned cpu, void (*run)(void *argument), void *argument)
{
	struct cpu_work work = {.run = run, .argument = argument};
	smp_post(cpu, &work);
	smp_wait(&work);
}

void ap_main(struct cpu *c)
{
	wrmsr(MSR_GS_BASE, (uint64_t)c);
	trap_init_ap(c->index);
	if (!cpu_features_equal(cpu_features_read(), cpu)) /* its CR4 bits would be the BSP's: stop first */
		KeBugCheckEx(UNSUPPORTED_PROCESSOR, c->index, c->apic_id, 0, 0);
	cpu_enable_features();
	local_apic_enable();
	__atomic_or_fetch(&cpus_online, CPU_BIT(c->index), __ATOMIC_RELEASE);
	for (;;)
		smp_wait(NULL);
}

bool smp_claim_stop(void)
{
	int me = (int)this_cpu()->index, expected = -1;
	return __atomic_compare_exchange_n(&stopping_cpu, &expected, me, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ||
	       expected == me;
}

bool smp_stopping(void)
{
	return __atomic_load_n(&stopping_cpu, __ATOMIC_SEQ_CST) >= 0;
}

void smp_freeze(void)
{
	__atomic_or_fetch(&cpus_frozen, CPU_BIT(this_cpu()->index), __ATOMIC_SEQ_CST);
	halt_forever();
}

cpu_set_t smp_stop_others(void)
{
	cpu_set_t others = cpus_other_than_me();
	if (!others)
		return 0;
	local_apic_send_nmi_to_others();
	uint64_t start = rdtsc();
	while ((__atomic_load_n(&cpus_frozen, __ATOMIC_SEQ_CST) & others) != others && rdtsc() - start < STOP_TIMEOUT_TICKS)
		cpu_relax();
	return __atomic_load_n(&cpus_frozen, __ATOMIC_SEQ_CST) & others;
}
