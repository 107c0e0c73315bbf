/*
 * The page-permission probe (include/access_probe.h): its private address space, the batches the
 * host sends, and their results. The loop that runs a batch is kernel/access_probe_loop.S.
 *
 * The probe space is a tree of its own. Its top-level table holds, besides the slots of the pages
 * below, one case per free slot. The pages are mapped with the kernel's walker (pt_set on a tree no
 * CPU has loaded), without XD and without G: the probe's code and data at their kernel VAs, the
 * GDT, TSS and TSS.RSP0 stack the CPU uses at the kernel VAs it knows them by, and the ring-3 code
 * and stack at ACCESS_PROBE_USER_*_VA. The cases' chains are written raw, into the probe's own
 * pool of tables, one entry per level: each case's table for level k is a page of its own.
 */
#include "access_probe.h"
#include "bugcodes.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"
#include "x86.h"

#define EXCEPTION_VECTORS 32
#define GATE_INTERRUPT_DPL0 0x8E
#define INFRA_PAGES_MAX 64
#define INFRA_TABLES_MAX (INFRA_PAGES_MAX * 4)
#define RSP0_STACK_PAGES 2 /* what an exception from ring 3 pushes, and the handler's one push */
#define VECTOR_INVALID_OPCODE 6
#define RFLAGS_RESERVED 0x2
#define RFLAGS_AC BIT(18)

struct access_run {
	uint64_t va, op, cpl, rflags, cr0, cr4, efer, value;
};

struct access_result {
	uint64_t vector, error, cr2, rip, cs, value;
};

struct PACKED descriptor_register {
	uint16_t limit;
	uint64_t base;
};

struct PACKED idt_gate {
	uint16_t offset_low, selector;
	uint8_t ist, type;
	uint16_t offset_mid;
	uint32_t offset_high, reserved;
};

struct access_state {
	uint64_t count, index, in_case;
	struct access_result *current;
	struct access_run *runs;
	uint64_t loop_rsp, probe_cr3, probe_cr4, user_rip, user_rsp;
	uint64_t kernel_rsp, kernel_cr0, kernel_cr3, kernel_cr4, kernel_efer;
	uint64_t current_cr0, current_cr4, current_efer;
	struct descriptor_register kernel_idtr;
	uint8_t kernel_idtr_padding[6];
	struct descriptor_register probe_idtr;
	uint8_t probe_idtr_padding[6];
	struct access_result *results;
};

/* Everything the batch loop touches in the probe space, on pages of its own. */
struct access_probe_space {
	uint8_t stack[ACCESS_STACK_SIZE];
	uint8_t user_stack[PAGE_SIZE];
	struct access_state state;
	struct idt_gate idt[EXCEPTION_VECTORS];
	struct access_run runs[ACCESS_BATCH_MAX];
	struct access_result results[ACCESS_BATCH_MAX];
};

_Static_assert(sizeof(struct access_run) == ACCESS_RUN_SIZE, "access_probe.h run layout");
_Static_assert(__builtin_offsetof(struct access_run, cr0) == ACCESS_RUN_CR0, "access_probe.h run layout");
_Static_assert(__builtin_offsetof(struct access_run, value) == ACCESS_RUN_VALUE, "access_probe.h run layout");
_Static_assert(sizeof(struct access_result) == ACCESS_RESULT_SIZE, "access_probe.h result layout");
_Static_assert(__builtin_offsetof(struct access_result, value) == ACCESS_RESULT_VALUE,
	       "access_probe.h result layout");
_Static_assert(__builtin_offsetof(struct access_probe_space, state) == ACCESS_SPACE_STATE,
	       "access_probe.h space layout");
_Static_assert(__builtin_offsetof(struct access_state, runs) == ACCESS_STATE_RUNS,
	       "access_probe.h state layout");
_Static_assert(__builtin_offsetof(struct access_state, user_rsp) == ACCESS_STATE_USER_RSP,
	       "access_probe.h state layout");
_Static_assert(__builtin_offsetof(struct access_state, current_efer) == ACCESS_STATE_CURRENT_EFER,
	       "access_probe.h state layout");
_Static_assert(__builtin_offsetof(struct access_state, kernel_idtr) == ACCESS_STATE_KERNEL_IDTR,
	       "access_probe.h state layout");
_Static_assert(__builtin_offsetof(struct access_state, probe_idtr) == ACCESS_STATE_PROBE_IDTR,
	       "access_probe.h state layout");
_Static_assert(__builtin_offsetof(struct access_state, results) == ACCESS_STATE_RESULTS,
	       "access_probe.h state layout");
_Static_assert(sizeof(struct access_state) == ACCESS_STATE_SIZE, "access_probe.h state layout");
_Static_assert(ACCESS_STACK_SIZE % PAGE_SIZE == 0, "the user stack is a page of its own");

struct access_probe_space access_probe_space __attribute__((section(".bss.access_probe"))) ALIGNED(PAGE_SIZE);

/* kernel/access_probe_loop.S */
extern const char access_probe_text_start[], access_probe_text_end[], access_probe_user_page[];
extern const char access_probe_ring0_read[], access_probe_ring0_write[];
extern const char access_probe_user_read[], access_probe_user_write[], access_probe_user_done[];
extern const uint64_t access_probe_trap_entries[EXCEPTION_VECTORS];
void access_probe_execute(void);
NORETURN void access_probe_broken(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2);

/* Where the CPU finds its descriptor tables and ring-0 stack: the probe space maps these pages. */
struct descriptor_tables {
	uint64_t gdt_base, gdt_limit, tss_base, tss_limit, rsp0;
};

static struct {
	bool ready;
	unsigned maxphyaddr;        /* CPUID.80000008H:EAX[7:0] */
	uint64_t root_pa;
	pfn_t pool;                 /* code page, data page, then the cases' tables */
	uint64_t pool_frames;
	uint16_t slots[ACCESS_BATCH_MAX];
	unsigned slot_count;
	uint64_t infra_pages[INFRA_PAGES_MAX];
	unsigned infra_page_count;
	pfn_t infra_tables[INFRA_TABLES_MAX];
	unsigned infra_table_count;
	struct descriptor_tables tables;
	volatile uint64_t *written[ACCESS_BATCH_MAX * 5]; /* entries the last batch wrote */
	unsigned written_count;
} probe;

static uint64_t user_va(const char *label)
{
	return ACCESS_PROBE_USER_CODE_VA + (uint64_t)(label - access_probe_user_page);
}

static struct descriptor_tables current_descriptor_tables(void)
{
	struct descriptor_register gdtr;
	uint16_t tr;
	asm volatile("sgdt %0" : "=m"(gdtr));
	asm volatile("str %0" : "=rm"(tr));
	const uint64_t *descriptor = (const uint64_t *)(gdtr.base + (tr & ~7u));
	uint64_t low = descriptor[0], high = descriptor[1];
	uint64_t tss = (low >> 16 & 0xFFFFFF) | (low >> 56 & 0xFF) << 24 | (high & 0xFFFFFFFF) << 32;
	uint64_t rsp0;
	memcpy(&rsp0, (const void *)(tss + 4), sizeof(rsp0)); /* TSS.RSP0 sits at byte 4, unaligned */
	return (struct descriptor_tables){
		.gdt_base = gdtr.base,
		.gdt_limit = gdtr.limit,
		.tss_base = tss,
		.tss_limit = (low & 0xFFFF) | (low >> 48 & 0xF) << 16,
		.rsp0 = rsp0,
	};
}

/* The frame a kernel VA maps to in the live tables, 0 when it is not mapped. */
static uint64_t kernel_page_pa(uint64_t va)
{
	struct pt_view live = pt_live();
	struct pt_walk walk = pt_walk(&live, va);
	return walk.stop == PT_LEAF ? pt_leaf_address(&walk, va & ~PAGE_OFFSET_MASK) : 0;
}

/* Maps one page in the probe space without XD or G (a page already there stays as it is). */
static bool map_probe_page(uint64_t va, uint64_t pa, bool writable, bool user, struct access_probe_refusal *refusal)
{
	struct pt_view tree = pt_tree(probe.root_pa);
	if (pt_walk(&tree, va).stop == PT_LEAF)
		return true;
	if (!pa || probe.infra_page_count == INFRA_PAGES_MAX) {
		const char *reason = pa ? "too many pages for the probe space" : "a page the CPU needs is not mapped";
		*refusal = (struct access_probe_refusal){reason, -1, va};
		return false;
	}
	uint64_t leaf = pa | PTE_P | PTE_A | PTE_D | (writable ? PTE_RW : 0) | (user ? PTE_US : 0);
	struct tlb_flush flush = pt_set(&tree, va, 1, leaf);
	bool mapped = flush.changed;
	tlb_flush_not_needed(flush); /* no CPU has loaded this tree yet */
	if (!mapped) {
		*refusal = (struct access_probe_refusal){"no frame left for a probe-space table", -1, va};
		return false;
	}
	if (user) /* U/S on every level down to the page, in the probe's own tables */
		for (unsigned level = paging_levels; level > 1; level--)
			*pt_walk_to(&tree, va, level).slot |= PTE_US;
	probe.infra_pages[probe.infra_page_count++] = va;
	return true;
}

static bool map_kernel_range(uint64_t start, uint64_t end, bool writable, struct access_probe_refusal *refusal)
{
	for (uint64_t va = start & ~PAGE_OFFSET_MASK; va < end; va += PAGE_SIZE)
		if (!map_probe_page(va, kernel_page_pa(va), writable, false, refusal))
			return false;
	return true;
}

static bool map_infrastructure(struct access_probe_refusal *refusal)
{
	struct descriptor_tables t = probe.tables;
	uint64_t space = (uint64_t)&access_probe_space;
	return map_kernel_range((uint64_t)access_probe_text_start, (uint64_t)access_probe_text_end, false, refusal) &&
	       map_kernel_range(space, space + sizeof(access_probe_space), true, refusal) &&
	       map_kernel_range(t.gdt_base, t.gdt_base + t.gdt_limit + 1, true, refusal) &&
	       map_kernel_range(t.tss_base, t.tss_base + t.tss_limit + 1, true, refusal) &&
	       map_kernel_range(t.rsp0 - RSP0_STACK_PAGES * PAGE_SIZE, t.rsp0, true, refusal) &&
	       map_probe_page(ACCESS_PROBE_USER_CODE_VA, image_virt_to_phys(access_probe_user_page), false, true, refusal) &&
	       map_probe_page(ACCESS_PROBE_USER_STACK_VA, image_virt_to_phys(access_probe_space.user_stack), true, true,
			      refusal);
}

/* The tables pt_set built for the probe's pages, found with the walker, each once. */
static void collect_infrastructure_tables(void)
{
	struct pt_view tree = pt_tree(probe.root_pa);
	probe.infra_table_count = 0;
	for (unsigned i = 0; i < probe.infra_page_count; i++) {
		for (unsigned level = paging_levels; level > 1; level--) {
			struct pt_walk walk = pt_walk_to(&tree, probe.infra_pages[i], level);
			pfn_t table = (walk.entry & PTE_ADDR_MASK) >> PAGE_SHIFT;
			unsigned k = 0;
			while (k < probe.infra_table_count && probe.infra_tables[k] != table)
				k++;
			if (k == probe.infra_table_count)
				probe.infra_tables[probe.infra_table_count++] = table;
		}
	}
}

static void free_probe_frames(void)
{
	for (unsigned i = 0; i < probe.infra_table_count; i++)
		frame_free(probe.infra_tables[i], PFN_PAGE_TABLE);
	for (uint64_t i = 0; i < probe.pool_frames; i++)
		frame_free(probe.pool + i, PFN_PAGE_TABLE);
	if (probe.root_pa)
		frame_free(probe.root_pa >> PAGE_SHIFT, PFN_PAGE_TABLE);
	probe.infra_table_count = 0;
	probe.infra_page_count = 0;
	probe.pool_frames = 0;
	probe.root_pa = 0;
	probe.written_count = 0;
}

static uint64_t pool_pa(uint64_t index)
{
	return (probe.pool + index) << PAGE_SHIFT;
}

static uint64_t code_pa(void)
{
	return pool_pa(0);
}

static uint64_t data_pa(void)
{
	return pool_pa(1);
}

/* Case i's table for level (1 .. levels - 1). */
static uint64_t table_pa(unsigned i, unsigned level)
{
	return pool_pa(2 + (uint64_t)i * (paging_levels - 1) + (paging_levels - 1 - level));
}

static void fill_targets(void)
{
	uint8_t *code = phys_to_virt(code_pa());
	memset(code, 0xCC, PAGE_SIZE); /* INT3 around the RET a fetch runs */
	code[ACCESS_FETCH_OFFSET] = 0xC3;
	uint8_t *data = phys_to_virt(data_pa());
	memset(data, 0, PAGE_SIZE);
	uint64_t signature = ACCESS_SIGNATURE;
	memcpy(data + ACCESS_READ_OFFSET, &signature, sizeof(signature));
}

static void fill_idt(void)
{
	uint16_t cs;
	asm volatile("mov %%cs, %0" : "=r"(cs));
	for (unsigned v = 0; v < EXCEPTION_VECTORS; v++) {
		uint64_t entry = access_probe_trap_entries[v];
		access_probe_space.idt[v] = (struct idt_gate){
			.offset_low = (uint16_t)entry,
			.selector = cs,
			.type = GATE_INTERRUPT_DPL0,
			.offset_mid = (uint16_t)(entry >> 16),
			.offset_high = (uint32_t)(entry >> 32),
		};
	}
	struct access_state *s = &access_probe_space.state;
	s->probe_idtr = (struct descriptor_register){sizeof(access_probe_space.idt) - 1, (uint64_t)access_probe_space.idt};
	s->runs = access_probe_space.runs;
	s->results = access_probe_space.results;
	s->current = access_probe_space.results;
	s->user_rip = ACCESS_PROBE_USER_CODE_VA;
	s->user_rsp = ACCESS_PROBE_USER_STACK_VA + PAGE_SIZE;
}

static void fill_info(struct access_probe_info *info)
{
	*info = (struct access_probe_info){
		.root_pa = probe.root_pa,
		.tables_pa = table_pa(0, paging_levels - 1),
		.code_pa = code_pa(),
		.data_pa = data_pa(),
		.slot_count = probe.slot_count,
		.slots = probe.slots,
		.maxphyaddr = probe.maxphyaddr,
		.ring0_read_rip = (uint64_t)access_probe_ring0_read,
		.ring0_write_rip = (uint64_t)access_probe_ring0_write,
		.ring3_read_rip = user_va(access_probe_user_read),
		.ring3_write_rip = user_va(access_probe_user_write),
		.frames = access_probe_frames(),
	};
}

bool access_probe_setup(struct access_probe_info *info, struct access_probe_refusal *refusal)
{
	if (probe.ready) {
		fill_info(info);
		return true;
	}
	pfn_t root = frame_alloc(PFN_PAGE_TABLE);
	if (root == PFN_NONE) {
		*refusal = (struct access_probe_refusal){"no frame left for the probe space's top-level table", -1, 0};
		return false;
	}
	probe.root_pa = root << PAGE_SHIFT;
	probe.maxphyaddr = cpuid(0x80000008, 0).eax & 0xFF;
	memset(phys_to_virt(probe.root_pa), 0, PAGE_SIZE);
	probe.tables = current_descriptor_tables();
	if (!map_infrastructure(refusal)) {
		collect_infrastructure_tables();
		free_probe_frames();
		return false;
	}
	collect_infrastructure_tables();
	const volatile uint64_t *top = phys_to_virt(probe.root_pa);
	probe.slot_count = 0;
	for (unsigned slot = 0; slot < PT_ENTRIES && probe.slot_count < ACCESS_BATCH_MAX; slot++)
		if (!top[slot])
			probe.slots[probe.slot_count++] = (uint16_t)slot;
	uint64_t frames = 2 + (uint64_t)probe.slot_count * (paging_levels - 1);
	probe.pool = frames_alloc_contiguous(frames, 0, ~0ul, 0, PFN_PAGE_TABLE);
	if (probe.pool == PFN_NONE) {
		free_probe_frames();
		*refusal = (struct access_probe_refusal){"no contiguous run of frames for the probe's tables", -1, frames};
		return false;
	}
	probe.pool_frames = frames;
	memset(phys_to_virt(pool_pa(0)), 0, frames * PAGE_SIZE);
	fill_targets();
	fill_idt();
	probe.ready = true;
	fill_info(info);
	return true;
}

void access_probe_release(void)
{
	if (!probe.ready)
		return;
	free_probe_frames();
	probe.ready = false;
}

uint64_t access_probe_frames(void)
{
	return probe.ready ? 1 + probe.infra_table_count + probe.pool_frames : 0;
}

/* The VA case i accesses: its slot's first address, the target page's offset inside a 1 GiB page
 * (so that a leaf of any size maps it), the access's offset in the page. */
static uint64_t case_va(unsigned i, unsigned op)
{
	uint64_t slot_base = SIGN_EXTEND((uint64_t)probe.slots[i] << LEVEL_SHIFT(paging_levels), VA_BITS(paging_levels));
	uint64_t target = op == ACCESS_OP_FETCH ? code_pa() : data_pa();
	uint64_t offset = op == ACCESS_OP_FETCH ? ACCESS_FETCH_OFFSET : op == ACCESS_OP_READ ? ACCESS_READ_OFFSET
											     : ACCESS_WRITE_OFFSET;
	return slot_base + (target & (LEVEL_SIZE(3) - 1)) + offset;
}

static bool refuse(struct access_probe_refusal *refusal, const char *what, int case_index, uint64_t value)
{
	*refusal = (struct access_probe_refusal){what, case_index, value};
	return false;
}

static uint16_t spec_at(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

/* Every case of the batch is well formed and runs on this CPU; nothing is touched. */
static bool check_batch(const uint8_t *cases, size_t length, unsigned *count, struct access_probe_refusal *refusal)
{
	unsigned n = 0;
	for (size_t pos = 0; pos < length; n++) {
		if (n == probe.slot_count)
			return refuse(refusal, "more cases than the probe space has slots", (int)n, probe.slot_count);
		if (pos + 2 > length)
			return refuse(refusal, "the batch ends inside a case", (int)n, pos);
		uint8_t controls = cases[pos], entries = cases[pos + 1];
		if ((controls & ACCESS_CONTROL_OP_MASK) > ACCESS_OP_FETCH)
			return refuse(refusal, "no such access", (int)n, controls);
		if ((controls & ACCESS_CONTROL_SMEP) && !cpu.smep)
			return refuse(refusal, "CR4.SMEP on a CPU without SMEP", (int)n, controls);
		if ((controls & ACCESS_CONTROL_SMAP) && !cpu.smap)
			return refuse(refusal, "CR4.SMAP on a CPU without SMAP", (int)n, controls);
		if ((controls & ACCESS_CONTROL_NXE) && !cpu.nx)
			return refuse(refusal, "EFER.NXE on a CPU without NX", (int)n, controls);
		if (entries < 1 || entries > paging_levels)
			return refuse(refusal, "a chain holds 1 entry to one per paging level", (int)n, entries);
		if (pos + 2 + 2u * entries > length)
			return refuse(refusal, "the batch ends inside a case", (int)n, pos);
		for (unsigned e = 0; e < entries; e++) {
			uint16_t spec = spec_at(cases + pos + 2 + 2 * e);
			unsigned level = paging_levels - e;
			if (spec & ~ACCESS_SPEC_VALID)
				return refuse(refusal, "an entry sets bits outside the encoding", (int)n, spec);
			if ((spec & ACCESS_SPEC_RESERVED_PHYS) && probe.maxphyaddr >= 52)
				return refuse(refusal, "no physical-address bit is reserved at MAXPHYADDR 52", (int)n, spec);
			/* Bit 13 is an address bit anywhere but in a large leaf: it would move the walk elsewhere. */
			if ((spec & ACCESS_SPEC_RESERVED_LARGE) && !((spec & PTE_PS) && (level == 2 || level == 3)))
				return refuse(refusal, "bit 13 is reserved only in a PDE or PDPTE with PS=1", (int)n, spec);
		}
		pos += 2 + 2u * entries;
	}
	*count = n;
	return true;
}

/* Case i's entry at level, as its spec says; the address is the next table, or the target page where
 * the entry maps a page (level 1, or PS at level 2 or 3). */
static uint64_t entry_value(unsigned i, unsigned level, uint16_t spec, unsigned op)
{
	uint64_t value = spec & ACCESS_SPEC_ENTRY_BITS;
	if (spec & ACCESS_SPEC_XD)
		value |= PTE_NX;
	if (spec & ACCESS_SPEC_RESERVED_PHYS)
		value |= BIT(probe.maxphyaddr);
	if (spec & ACCESS_SPEC_RESERVED_LARGE)
		value |= BIT(ACCESS_LARGE_RESERVED_BIT);
	bool maps_page = level == 1 || ((spec & PTE_PS) && level <= LEAF_MAX_LEVEL);
	if (maps_page) {
		uint64_t target = op == ACCESS_OP_FETCH ? code_pa() : data_pa();
		value |= target & LEAF_ADDR_MASK(level);
	} else {
		value |= table_pa(i, level - 1);
	}
	return value;
}

static volatile uint64_t *entry_slot(unsigned i, unsigned level, uint64_t va)
{
	uint64_t table = level == paging_levels ? probe.root_pa : table_pa(i, level);
	return (volatile uint64_t *)phys_to_virt(table) + LEVEL_INDEX(va, level);
}

/* Raw writes, in the probe's own tables only; no CPU holds a translation through them (the probe
 * space is not loaded, and loading it drops every translation). */
static void build_batch(const uint8_t *cases, unsigned count)
{
	for (unsigned w = 0; w < probe.written_count; w++)
		*probe.written[w] = 0;
	probe.written_count = 0;
	struct access_state *s = &access_probe_space.state;
	size_t pos = 0;
	for (unsigned i = 0; i < count; i++) {
		uint8_t controls = cases[pos], entries = cases[pos + 1];
		unsigned op = controls & ACCESS_CONTROL_OP_MASK;
		uint64_t va = case_va(i, op);
		for (unsigned e = 0; e < entries; e++) {
			unsigned level = paging_levels - e;
			volatile uint64_t *slot = entry_slot(i, level, va);
			*slot = entry_value(i, level, spec_at(cases + pos + 2 + 2 * e), op);
			probe.written[probe.written_count++] = slot;
		}
		access_probe_space.runs[i] = (struct access_run){
			.va = va,
			.op = op,
			.cpl = controls & ACCESS_CONTROL_CPL3 ? 3 : 0,
			.rflags = RFLAGS_RESERVED | (controls & ACCESS_CONTROL_AC ? RFLAGS_AC : 0),
			.cr0 = (s->kernel_cr0 & ~CR0_WP) | (controls & ACCESS_CONTROL_WP ? CR0_WP : 0),
			.cr4 = (s->probe_cr4 & ~(CR4_SMEP | CR4_SMAP)) | (controls & ACCESS_CONTROL_SMEP ? CR4_SMEP : 0) |
			       (controls & ACCESS_CONTROL_SMAP ? CR4_SMAP : 0),
			.efer = (s->kernel_efer & ~EFER_NXE) | (controls & ACCESS_CONTROL_NXE ? EFER_NXE : 0),
			.value = i,
		};
		pos += 2 + 2u * entries;
	}
}

static void put_u64(uint8_t *out, uint64_t value)
{
	for (unsigned b = 0; b < 8; b++)
		out[b] = (uint8_t)(value >> (8 * b));
}

/* Ring 3 reaches the UD2 at access_probe_user_done when its access completed. */
static void encode_results(unsigned count, uint8_t *out)
{
	uint64_t done = user_va(access_probe_user_done);
	for (unsigned i = 0; i < count; i++, out += ACCESS_RESULT_BYTES) {
		const struct access_result *r = &access_probe_space.results[i];
		const struct access_run *run = &access_probe_space.runs[i];
		bool completed = r->vector == ACCESS_NO_VECTOR ||
				 (run->cpl == 3 && r->vector == VECTOR_INVALID_OPCODE && r->rip == done && (r->cs & 3) == 3);
		out[0] = completed ? (uint8_t)ACCESS_NO_VECTOR : (uint8_t)r->vector;
		out[1] = completed ? (uint8_t)run->cpl : (uint8_t)(r->cs & 3);
		out[2] = (uint8_t)r->error;
		out[3] = (uint8_t)(r->error >> 8);
		put_u64(out + 4, completed ? 0 : r->cr2);
		put_u64(out + 12, completed ? 0 : r->rip);
		put_u64(out + 20, r->value);
	}
}

bool access_probe_run(const uint8_t *cases, size_t length, uint8_t *out, unsigned *count,
		      struct access_probe_refusal *refusal)
{
	if (!probe.ready)
		return refuse(refusal, "the probe space is not set up (access_probe_setup)", -1, 0);
	struct descriptor_tables now = current_descriptor_tables();
	if (memcmp(&now, &probe.tables, sizeof(now)))
		return refuse(refusal, "the GDT, TSS or TSS.RSP0 moved since access_probe_setup", -1, now.tss_base);
	if (!check_batch(cases, length, count, refusal))
		return false;
	struct access_state *s = &access_probe_space.state;
	s->kernel_cr0 = read_cr0();
	s->kernel_cr3 = read_cr3();
	s->kernel_cr4 = read_cr4();
	s->kernel_efer = rdmsr(MSR_EFER);
	s->probe_cr3 = probe.root_pa;
	s->probe_cr4 = s->kernel_cr4 & ~CR4_PGE;
	s->current_cr0 = s->kernel_cr0;
	s->current_cr4 = s->probe_cr4;
	s->current_efer = s->kernel_efer;
	s->count = *count;
	s->in_case = 0;
	build_batch(cases, *count);
	memset(access_probe_space.results, 0, sizeof(access_probe_space.results));
	access_probe_execute();
	encode_results(*count, out);
	return true;
}

void access_probe_broken(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2)
{
	KeBugCheckEx(UNEXPECTED_KERNEL_MODE_TRAP, vector, error, rip, cr2);
}
