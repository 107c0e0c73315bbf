/*
 * The processors on the agent channel (docs/smp.md): cpu_info, and smp_stress, the one command that
 * runs DDIs on several CPUs at the same moment. Every other command runs alone (dispatch.c), so
 * only the families smp_stress drives are written to be called concurrently: pool, system PTEs
 * (MDL mappings), reserved mappings, and what they rest on (frames, page tables, MDLs).
 *
 * smp_stress <family> <rounds> <cpu_mask>: the CPUs of the mask meet at a start barrier, then each
 * runs `rounds` rounds over HELD slots: check the marker of the slot's allocation and free it,
 * allocate a new one, write its marker. Every CPU holds HELD allocations at every moment, so they
 * overlap with the other CPUs'. The last round's stay held, for the host to verify, until
 * smp_stress_release. The answer holds, per CPU, one record per allocation (six little-endian u64):
 * held_from, held_until (0: still held), va, bytes, pfn0, pfn1 (0 when the allocation has no
 * second page, or is a small pool block). held_from and held_until are stamps of one global
 * counter taken after the allocation returned and before the free was called: an interval in which
 * the CPU certainly held it. Two allocations whose intervals meet must not share a PTE or a frame.
 */
#include "kstring.h"
#include "layout.h"
#include "local_apic.h"
#include "mdl.h"
#include "ntddk.h"
#include "pool.h"
#include "protocol.h"
#include "reserved_mapping.h"
#include "smp.h"
#include "x86.h"

enum stress_family { STRESS_POOL = 1, STRESS_SYSTEM_PTES = 2, STRESS_RESERVED_MAPPINGS = 3 };

#define HELD 4
#define ROUNDS_MAX 32
#define CPU_ROUNDS_MAX 128 /* rounds * CPUs: keeps the answer inside the mailbox */
#define STRESS_PAGES 2     /* pages of every MDL, big pool block and reservation */
#define LOG_TAG 0x4C706D53u   /* 'SmpL' */
#define POOL_TAG_BASE 0x30706D53u  /* 'Smp0' + CPU */
#define MAPPING_TAG_BASE 0x30726D53u /* 'Smr0' + CPU */
#define MARKER 0x6D6D68696C534D50ull

struct stress_record {
	uint64_t held_from, held_until, va, bytes, pfn[2];
};

struct held {
	uint64_t va, bytes; /* 0: the slot is empty */
	PMDL mdl;
	struct stress_record *record;
};

struct stress_run {
	enum stress_family family;
	unsigned rounds, participants;
	volatile unsigned arrived;
	struct stress_record *log[MAX_CPUS];
	unsigned logged[MAX_CPUS];
	uint64_t corrupted;
};

static enum stress_family kept_family;
static struct held kept[MAX_CPUS][HELD];
static uint64_t stress_clock;

static uint64_t stamp(void)
{
	return __atomic_add_fetch(&stress_clock, 1, __ATOMIC_SEQ_CST);
}

static void cpu_info(const struct request *r)
{
	struct cpu *me = this_cpu();
	frame_open_response(r->id);
	frame_decimal("cpu", me->index);
	frame_decimal("apic_id", local_apic_id());
	frame_decimal("cpus", cpu_count);
	frame_hex("online", cpus_online);
	frame_decimal("irql", KeGetCurrentIrql());
	frame_hex("cr3", read_cr3());
	frame_hex("cr4", read_cr4());
	frame_hex("gs_base", rdmsr(MSR_GS_BASE));
	frame_hex("stack_base", me->stack_base);
	frame_hex("stack_top", me->stack_top);
	frame_hex("stack_pointer", read_rsp());
	frame_close();
}

static PMDL two_page_mdl(void)
{
	PHYSICAL_ADDRESS low = {.QuadPart = 0}, high = {.QuadPart = (LONGLONG)(BIT(52) - 1)}, skip = {.QuadPart = 0};
	return MmAllocatePagesForMdlEx(low, high, skip, STRESS_PAGES * PAGE_SIZE, MmCached, MM_ALLOCATE_FULLY_REQUIRED);
}

static void free_mdl_pages(PMDL mdl)
{
	MmFreePagesFromMdl(mdl);
	ExFreePool(mdl);
}

static uint64_t pfn_of(uint64_t va)
{
	return (uint64_t)MmGetPhysicalAddress((PVOID)va).QuadPart >> PAGE_SHIFT;
}

/* What the slot's allocation holds at the start of each of its pages. */
static void marker(uint64_t *out, unsigned cpu, const struct held *h, uint64_t page)
{
	out[0] = MARKER ^ (uint64_t)cpu << 56 ^ h->record->held_from;
	out[1] = h->va + page * PAGE_SIZE;
}

static uint64_t marked_pages(const struct held *h)
{
	return h->bytes < PAGE_SIZE ? 1 : h->bytes / PAGE_SIZE;
}

static void write_markers(unsigned cpu, const struct held *h)
{
	for (uint64_t page = 0; page < marked_pages(h); page++)
		marker((uint64_t *)(h->va + page * PAGE_SIZE), cpu, h, page);
}

static bool markers_intact(unsigned cpu, const struct held *h)
{
	for (uint64_t page = 0; page < marked_pages(h); page++) {
		uint64_t want[2];
		marker(want, cpu, h, page);
		if (memcmp((const void *)(h->va + page * PAGE_SIZE), want, sizeof(want)))
			return false;
	}
	return true;
}

/* 0 when the DDI could not give one: the round simply leaves the slot empty. */
static uint64_t allocate(enum stress_family family, unsigned cpu, unsigned round, unsigned slot, struct held *h)
{
	switch (family) {
	case STRESS_POOL:
		h->bytes = slot == HELD - 1 ? STRESS_PAGES * PAGE_SIZE : 32 + 16 * ((round + slot) % 24);
		return (uint64_t)ExAllocatePoolWithTag(NonPagedPoolNx, h->bytes, POOL_TAG_BASE + (cpu << 24));
	case STRESS_SYSTEM_PTES: {
		h->bytes = STRESS_PAGES * PAGE_SIZE;
		h->mdl = two_page_mdl();
		PVOID va = h->mdl ? MmMapLockedPagesSpecifyCache(h->mdl, KernelMode, MmCached, NULL, FALSE,
								 NormalPagePriority)
				  : NULL;
		if (!va && h->mdl)
			free_mdl_pages(h->mdl);
		return (uint64_t)va;
	}
	case STRESS_RESERVED_MAPPINGS: {
		ULONG tag = MAPPING_TAG_BASE + (cpu << 24);
		h->bytes = STRESS_PAGES * PAGE_SIZE;
		PVOID p = MmAllocateMappingAddress(h->bytes, tag);
		h->mdl = p ? two_page_mdl() : NULL;
		PVOID va = h->mdl ? MmMapLockedPagesWithReservedMapping(p, tag, h->mdl, MmCached) : NULL;
		if (!va && h->mdl)
			free_mdl_pages(h->mdl);
		if (!va && p)
			MmFreeMappingAddress(p, tag);
		return (uint64_t)va;
	}
	}
	return 0;
}

static void release(enum stress_family family, unsigned cpu, struct held *h)
{
	switch (family) {
	case STRESS_POOL:
		ExFreePoolWithTag((PVOID)h->va, POOL_TAG_BASE + (cpu << 24));
		break;
	case STRESS_SYSTEM_PTES:
		MmUnmapLockedPages((PVOID)h->va, h->mdl);
		free_mdl_pages(h->mdl);
		break;
	case STRESS_RESERVED_MAPPINGS: {
		ULONG tag = MAPPING_TAG_BASE + (cpu << 24);
		MmUnmapReservedMapping((PVOID)h->va, tag, h->mdl);
		MmFreeMappingAddress((PVOID)h->va, tag);
		free_mdl_pages(h->mdl);
		break;
	}
	}
	*h = (struct held){0};
}

static void take_slot(struct stress_run *run, unsigned cpu, unsigned round, struct held *h)
{
	uint64_t va = allocate(run->family, cpu, round, (unsigned)(h - kept[cpu]), h);
	if (!va) {
		*h = (struct held){0};
		return;
	}
	struct stress_record *rec = &run->log[cpu][run->logged[cpu]++];
	*rec = (struct stress_record){.held_from = stamp(), .va = va, .bytes = h->bytes};
	if (h->mdl) {
		PPFN_NUMBER pfns = MmGetMdlPfnArray(h->mdl);
		rec->pfn[0] = pfns[0];
		rec->pfn[1] = pfns[1];
	} else {
		rec->pfn[0] = pfn_of(va);
		rec->pfn[1] = h->bytes >= PAGE_SIZE ? pfn_of(va + PAGE_SIZE) : 0;
	}
	h->va = va;
	h->record = rec;
	write_markers(cpu, h);
}

static void drop_slot(struct stress_run *run, unsigned cpu, struct held *h)
{
	if (!markers_intact(cpu, h))
		__atomic_add_fetch(&run->corrupted, 1, __ATOMIC_SEQ_CST);
	h->record->held_until = stamp();
	release(run->family, cpu, h);
}

/* Every participant arrives before any of them allocates. */
static void start_barrier(struct stress_run *run)
{
	__atomic_add_fetch(&run->arrived, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&run->arrived, __ATOMIC_SEQ_CST) < run->participants)
		cpu_relax();
}

static void stress_cpu(void *argument)
{
	struct stress_run *run = argument;
	unsigned cpu = this_cpu()->index;
	uint64_t flags = interrupts_save_enable(); /* as for any command (dispatch.c) */
	start_barrier(run);
	for (unsigned round = 0; round < run->rounds; round++) {
		for (unsigned slot = 0; slot < HELD; slot++) {
			struct held *h = &kept[cpu][slot];
			if (h->va)
				drop_slot(run, cpu, h);
			take_slot(run, cpu, round, h);
		}
	}
	for (unsigned slot = 0; slot < HELD; slot++)
		kept[cpu][slot].record = NULL; /* the log goes when the answer is composed */
	interrupts_restore(flags);
}

static bool anything_kept(void)
{
	for (unsigned k = 0; k < MAX_CPUS; k++)
		for (unsigned slot = 0; slot < HELD; slot++)
			if (kept[k][slot].va)
				return true;
	return false;
}

static bool stress_arguments_ok(const struct request *r, uint64_t family, uint64_t rounds, uint64_t mask)
{
	const char *why = 0;
	if (family < STRESS_POOL || family > STRESS_RESERVED_MAPPINGS)
		why = "family must be 1 (pool), 2 (system PTEs) or 3 (reserved mappings)";
	else if (!mask || (mask & ~(uint64_t)cpus_online))
		why = "cpu_mask must name online CPUs only, at least one";
	else if (rounds < 1 || rounds > ROUNDS_MAX || rounds * cpus_in_set(mask) > CPU_ROUNDS_MAX)
		why = "rounds must be 1 to 32, and rounds times CPUs at most 128";
	else if (anything_kept())
		why = "the allocations of the last smp_stress are still held: smp_stress_release first";
	for (unsigned k = 0; !why && k < cpu_count; k++)
		if ((mask & CPU_BIT(k)) && cpus[k].irql != PASSIVE_LEVEL)
			why = "every CPU of cpu_mask must be at PASSIVE_LEVEL";
	if (why)
		frame_error(r->id, ERROR_BAD_ARGUMENT, "%s", why);
	return !why;
}

static void smp_stress(const struct request *r)
{
	uint64_t family = r->values[0].integer, rounds = r->values[1].integer, mask = r->values[2].integer;
	if (!stress_arguments_ok(r, family, rounds, mask))
		return;
	struct stress_run run = {.family = (enum stress_family)family, .rounds = (unsigned)rounds,
				 .participants = cpus_in_set(mask)};
	for (unsigned k = 0; k < cpu_count; k++) {
		if (!(mask & CPU_BIT(k)))
			continue;
		run.log[k] = ExAllocatePoolWithTag(NonPagedPoolNx, rounds * HELD * sizeof(struct stress_record), LOG_TAG);
		if (!run.log[k]) {
			for (unsigned j = 0; j < k; j++)
				if (run.log[j])
					ExFreePoolWithTag(run.log[j], LOG_TAG);
			frame_error(r->id, ERROR_BAD_ARGUMENT, "no pool left for the log of the run");
			return;
		}
	}
	kept_family = run.family;
	unsigned here = this_cpu()->index;
	struct cpu_work work[MAX_CPUS];
	for (unsigned k = 0; k < cpu_count; k++) {
		if ((mask & CPU_BIT(k)) && k != here) {
			work[k] = (struct cpu_work){.run = stress_cpu, .argument = &run};
			smp_post(k, &work[k]);
		}
	}
	if (mask & CPU_BIT(here))
		stress_cpu(&run);
	for (unsigned k = 0; k < cpu_count; k++)
		if ((mask & CPU_BIT(k)) && k != here)
			smp_wait(&work[k]);

	frame_open_response(r->id);
	frame_decimal("corrupted", run.corrupted);
	for (unsigned k = 0; k < cpu_count; k++) {
		if (!(mask & CPU_BIT(k)))
			continue;
		char key[] = "cpu0";
		key[3] = (char)('0' + k);
		frame_bytes(key, (const uint8_t *)run.log[k], run.logged[k] * sizeof(struct stress_record));
		ExFreePoolWithTag(run.log[k], LOG_TAG);
	}
	frame_close();
}

static void smp_stress_release(const struct request *r)
{
	uint64_t released = 0;
	for (unsigned k = 0; k < MAX_CPUS; k++) {
		for (unsigned slot = 0; slot < HELD; slot++) {
			if (kept[k][slot].va) {
				release(kept_family, k, &kept[k][slot]);
				released++;
			}
		}
	}
	frame_open_response(r->id);
	frame_decimal("released", released);
	frame_close();
}

AGENT_COMMAND("cpu_info", "", "no values", cpu_info);
AGENT_COMMAND("smp_stress", "iii", "<family:integer> <rounds:integer> <cpu_mask:integer>", smp_stress);
AGENT_COMMAND("smp_stress_release", "", "no values", smp_stress_release);
