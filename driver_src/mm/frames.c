#include "frames.h"
#include "bootinfo.h"
#include "bugcodes.h"
#include "console.h"
#include "kstring.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"

#define LOW_MEMORY_END_PFN 0x100 /* 1 MiB */
#define FOUR_GIB_PFN 0x100000
#define BOOT_RUNS_MAX 1024

struct pfn_entry {
	pfn_t next_free;      /* while on_free_list: the next entry of the free list (PFN_NONE ends it) */
	uint8_t state;
	/* Contiguous allocations take frames out of the middle of the singly linked free list by
	 * state alone; frame_alloc() drops such entries lazily when it pops them. */
	uint8_t on_free_list;
	uint16_t reserved;
	uint32_t lock_count;  /* MmProbeAndLockPages and friends: frames locked for I/O */
};
_Static_assert(sizeof(struct pfn_entry) == 16, "PFN entry size");
#define ENTRIES_PER_DATABASE_PAGE (PAGE_SIZE / sizeof(struct pfn_entry))

/*
 * The database starts as one zero frame mapped read-only at every one of its pages: a zero entry is
 * a free frame (PFN_FREE == 0), so the entries of RAM nobody used yet cost no memory and no writes.
 * A page gets a frame of its own the first time an entry in it is written (pfn_writable). Boot
 * writes a handful of pages; zeroing the whole database took most of a nested-KVM boot (1 MiB for
 * 256 MiB of RAM, 24 MiB for 6 GiB). Entries of the holes between RAM ranges are never written:
 * frame_state() answers PFN_NOT_RAM for them from the RAM ranges.
 */
static struct pfn_entry *const pfn_database = (struct pfn_entry *)PFN_DATABASE_BASE;
static uint64_t zero_frame_pa;

static struct ram_range ram[MEMMAP_MAX];
static unsigned ram_count;
static pfn_t highest_pfn;
static pfn_t image_first, image_end;

/*
 * Carving hands out frames never used since boot, highest first: frames of ram[carve_range] below
 * carve_next are untouched. It feeds the bootstrap, and after it every allocation the free list
 * cannot serve, so booting costs no walk over all of RAM (under nested KVM each guest instruction
 * is dear, and such a walk took most of a second).
 */
static unsigned carve_range;
static pfn_t carve_next;
struct boot_run {
	pfn_t first;
	uint64_t count;
	enum pfn_state state;
};
static struct boot_run boot_runs[BOOT_RUNS_MAX];
static unsigned boot_run_count;
static bool database_ready;

/*
 * The PFN lock: every change of a frame's state, the free list, the counters and the database's own
 * pages (pfn_writable), once the database exists (before, only the BSP runs). Freed frames, last freed first; counters kept as frames move.
 */
static KSPIN_LOCK pfn_lock;
static pfn_t free_head = PFN_NONE;
static uint64_t total_frames, above_4g_total, above_4g_free;
static uint64_t state_counts[PFN_STATE_COUNT];

static void add_ram(pfn_t first, pfn_t end)
{
	unsigned i = ram_count++;
	while (i > 0 && ram[i - 1].first > first) {
		ram[i] = ram[i - 1];
		i--;
	}
	ram[i] = (struct ram_range){first, end};
}

static void merge_overlapping_ram(void)
{
	unsigned kept = 0;
	for (unsigned i = 0; i < ram_count; i++) {
		if (kept && ram[i].first <= ram[kept - 1].end) {
			if (ram[i].end > ram[kept - 1].end)
				ram[kept - 1].end = ram[i].end;
		} else {
			ram[kept++] = ram[i];
		}
	}
	ram_count = kept;
}

void frames_bootstrap(void)
{
	for (unsigned i = 0; i < boot_info.memmap_count; i++) {
		const struct memmap_entry *e = &boot_info.memmap[i];
		pfn_t first = (e->base + PAGE_OFFSET_MASK) >> PAGE_SHIFT;
		pfn_t end = (e->base + e->size) >> PAGE_SHIFT;
		if (e->type == E820_RAM && first < end)
			add_ram(first, end);
	}
	merge_overlapping_ram();
	if (!ram_count)
		KeBugCheckEx(INSTALL_MORE_MEMORY, 0, 0, 0, 0);
	highest_pfn = ram[ram_count - 1].end - 1;
	image_first = image_virt_to_phys(__image_start) >> PAGE_SHIFT;
	image_end = image_virt_to_phys(__image_end) >> PAGE_SHIFT;
	carve_range = ram_count - 1;
	carve_next = ram[carve_range].end;
}

/* The next frame below the carving point, skipping the kernel image; PFN_NONE once RAM is used up. */
static pfn_t carve_frame(void)
{
	for (;;) {
		const struct ram_range *r = &ram[carve_range];
		pfn_t floor = r->first > LOW_MEMORY_END_PFN ? r->first : LOW_MEMORY_END_PFN;
		if (carve_next > floor) {
			pfn_t pfn = --carve_next;
			if (pfn < image_end && pfn >= image_first) {
				carve_next = image_first;
				continue;
			}
			return pfn;
		}
		if (carve_range == 0)
			return PFN_NONE;
		carve_next = ram[--carve_range].end;
	}
}

static void append_boot_run(pfn_t pfn, enum pfn_state state)
{
	if (boot_run_count == BOOT_RUNS_MAX) {
		kprintf("mmhil: more than %u runs of boot frames\n", BOOT_RUNS_MAX);
		KeBugCheckEx(PHASE0_INITIALIZATION_FAILED, BOOT_LIMIT, boot_run_count, BOOT_RUNS_MAX, 0);
	}
	boot_runs[boot_run_count++] = (struct boot_run){pfn, 1, state};
}

static void log_boot_frame(pfn_t pfn, enum pfn_state state)
{
	struct boot_run *last = boot_run_count ? &boot_runs[boot_run_count - 1] : 0;
	if (last && last->state == state && last->first == pfn + 1) {
		last->first = pfn;
		last->count++;
		return;
	}
	append_boot_run(pfn, state);
}

static bool is_ram(pfn_t pfn)
{
	for (unsigned i = 0; i < ram_count; i++)
		if (pfn < ram[i].end)
			return pfn >= ram[i].first;
	return false;
}

static volatile uint64_t *database_pte(pfn_t pfn)
{
	return (volatile uint64_t *)SELFMAP_PTE_ADDRESS(paging_levels, (uint64_t)&pfn_database[pfn]);
}

static void take_free(pfn_t pfn, enum pfn_state purpose);

/*
 * The free frames whose entries are being made writable so that they can be taken: a database page
 * must not get one of them (its caller takes it next, and would find it taken). Nested, because
 * accounting a database page's frame may make another page writable.
 */
static const struct being_taken {
	pfn_t pfn;
	const struct being_taken *outer;
} *being_taken;

static bool is_being_taken(pfn_t pfn)
{
	for (const struct being_taken *t = being_taken; t != NULL; t = t->outer)
		if (t->pfn == pfn)
			return true;
	return false;
}

/* A frame for a database page, taken without writing any entry (the page it is for is not writable
 * yet, and the frame's own entry may lie in it): the caller accounts for it afterwards. */
static pfn_t database_page_frame(void)
{
	if (!database_ready) {
		pfn_t pfn = carve_frame();
		if (pfn == PFN_NONE)
			KeBugCheckEx(INSTALL_MORE_MEMORY, 0, ram[0].first, highest_pfn, 0);
		/* pfn_database_init() accounts for it; a run of its own, as the run being accounted
		 * for must not grow under it */
		append_boot_run(pfn, PFN_DATABASE);
		return pfn;
	}
	while (free_head != PFN_NONE) { /* entries on the free list were written, so they are writable */
		pfn_t pfn = free_head;
		free_head = pfn_database[pfn].next_free;
		pfn_database[pfn].on_free_list = false;
		if (pfn_database[pfn].state == PFN_FREE && !is_being_taken(pfn))
			return pfn;
	}
	for (;;) {
		pfn_t pfn = carve_frame();
		if (pfn == PFN_NONE)
			KeBugCheckEx(NO_PAGES_AVAILABLE, 0, 0, total_frames, 0);
		if (pfn_database[pfn].state == PFN_FREE && !is_being_taken(pfn))
			return pfn;
	}
}

/*
 * The entry of pfn, ready to be written (under the PFN lock once the database exists): its page gets
 * its own zeroed frame if it still shares the zero frame. Other CPUs read entries without the lock,
 * so the zero frame is swapped for the new one in one PTE store (both read as zeros), and every CPU
 * drops the read-only translation before anything is written to the page.
 */
static struct pfn_entry *pfn_writable(pfn_t pfn)
{
	volatile uint64_t *pte = database_pte(pfn);
	if ((*pte & PTE_ADDR_MASK) != zero_frame_pa)
		return &pfn_database[pfn];
	pfn_t frame = database_page_frame();
	memset(phys_to_virt(frame << PAGE_SHIFT), 0, PAGE_SIZE);
	uint64_t page = (uint64_t)&pfn_database[pfn] & ~PAGE_OFFSET_MASK;
	struct pt_view live = pt_live();
	tlb_flush(pt_replace(&live, page, pte_kernel_leaf(frame << PAGE_SHIFT, 1, PROT_READ_WRITE)));
	if (database_ready)
		take_free(frame, PFN_DATABASE); /* may make another page writable, never this one again */
	return &pfn_database[pfn];
}

/* pfn_writable() for a frame leaving `from`: a free frame's own page must not be given that frame. */
static struct pfn_entry *writable_leaving(pfn_t pfn, enum pfn_state from)
{
	const struct being_taken taking = {pfn, being_taken};
	if (from == PFN_FREE)
		being_taken = &taking;
	struct pfn_entry *e = pfn_writable(pfn);
	being_taken = taking.outer;
	return e;
}

static void set_state(struct pfn_entry *e, pfn_t pfn, enum pfn_state from, enum pfn_state to)
{
	if (e->state != from)
		KeBugCheckEx(PFN_LIST_CORRUPT, PFN_CORRUPT_STATE, pfn, e->state, from);
	e->state = to;
}

static void transition(pfn_t pfn, enum pfn_state from, enum pfn_state to)
{
	set_state(writable_leaving(pfn, from), pfn, from, to);
	state_counts[from]--;
	state_counts[to]++;
}

/* A frame that became free: back on the list unless its old entry was never popped. */
static void push_free(pfn_t pfn)
{
	above_4g_free += pfn >= FOUR_GIB_PFN;
	struct pfn_entry *e = pfn_writable(pfn);
	if (e->on_free_list)
		return;
	e->on_free_list = true;
	e->next_free = free_head;
	free_head = pfn;
}

static void take_free(pfn_t pfn, enum pfn_state purpose)
{
	transition(pfn, PFN_FREE, purpose);
	above_4g_free -= pfn >= FOUR_GIB_PFN;
}

static pfn_t alloc_locked(enum pfn_state purpose)
{
	while (free_head != PFN_NONE) {
		pfn_t pfn = free_head;
		free_head = pfn_database[pfn].next_free;
		pfn_database[pfn].on_free_list = false;
		if (pfn_database[pfn].state == PFN_FREE) { /* else taken by a contiguous allocation meanwhile */
			take_free(pfn, purpose);
			return pfn;
		}
	}
	/* The list is empty, so no frame is on it: carving passes only frames in use (contiguous runs). */
	for (;;) {
		pfn_t pfn = carve_frame();
		if (pfn == PFN_NONE)
			return PFN_NONE;
		if (pfn_database[pfn].state == PFN_FREE) {
			take_free(pfn, purpose);
			return pfn;
		}
	}
}

pfn_t frame_alloc(enum pfn_state purpose)
{
	if (!database_ready) {
		pfn_t pfn = carve_frame();
		if (pfn == PFN_NONE)
			KeBugCheckEx(INSTALL_MORE_MEMORY, 0, ram[0].first, highest_pfn, 0);
		log_boot_frame(pfn, purpose);
		return pfn;
	}
	KIRQL irql;
	KeAcquireSpinLock(&pfn_lock, &irql);
	pfn_t pfn = alloc_locked(purpose);
	KeReleaseSpinLock(&pfn_lock, irql);
	return pfn;
}

static bool run_is_free(pfn_t first, uint64_t count)
{
	unsigned i = 0;
	while (i < ram_count && ram[i].end <= first)
		i++;
	if (i == ram_count || first < ram[i].first || first + count > ram[i].end)
		return false; /* a run never spans a hole, whose entries say nothing */
	for (uint64_t i = 0; i < count; i++)
		if (pfn_database[first + i].state != PFN_FREE)
			return false;
	return true;
}

/* Makes the run's database pages writable before any of it is taken: a page that gets its own frame
 * takes that frame from the free frames, and it may be one of the run's. */
static bool run_writable_and_still_free(pfn_t first, uint64_t count)
{
	for (pfn_t pfn = first; pfn < first + count; pfn = (pfn | (ENTRIES_PER_DATABASE_PAGE - 1)) + 1)
		pfn_writable(pfn);
	return run_is_free(first, count);
}

pfn_t frames_alloc_contiguous(uint64_t count, pfn_t lowest, pfn_t highest, uint64_t boundary_pages,
			      enum pfn_state purpose)
{
	if (!database_ready || !count || lowest > highest)
		return PFN_NONE;
	if (highest > highest_pfn)
		highest = highest_pfn;
	if (lowest < LOW_MEMORY_END_PFN)
		lowest = LOW_MEMORY_END_PFN;
	if (highest < lowest || highest - lowest + 1 < count)
		return PFN_NONE;
	KIRQL irql;
	KeAcquireSpinLock(&pfn_lock, &irql);
	pfn_t found = PFN_NONE;
	/* Highest run first, as frame_alloc() hands out frames. */
	for (pfn_t first = highest + 1 - count;; first--) {
		bool crosses = boundary_pages && first / boundary_pages != (first + count - 1) / boundary_pages;
		if (!crosses && run_is_free(first, count) && run_writable_and_still_free(first, count)) {
			for (uint64_t i = 0; i < count; i++)
				take_free(first + i, purpose);
			found = first;
			break;
		}
		if (first == lowest)
			break;
	}
	KeReleaseSpinLock(&pfn_lock, irql);
	return found;
}

enum pfn_state frame_state(pfn_t pfn)
{
	return database_ready && is_ram(pfn) ? pfn_database[pfn].state : PFN_NOT_RAM;
}

uint32_t frame_lock(pfn_t pfn)
{
	KIRQL irql;
	KeAcquireSpinLock(&pfn_lock, &irql);
	enum pfn_state state = frame_state(pfn);
	if (state == PFN_NOT_RAM || state == PFN_FREE)
		KeBugCheckEx(MEMORY_MANAGEMENT, MM_LOCK_UNUSABLE_PAGE, pfn, state, 0);
	uint32_t count = ++pfn_writable(pfn)->lock_count;
	KeReleaseSpinLock(&pfn_lock, irql);
	return count;
}

uint32_t frame_unlock(pfn_t pfn)
{
	KIRQL irql;
	KeAcquireSpinLock(&pfn_lock, &irql);
	if (frame_state(pfn) == PFN_NOT_RAM || !pfn_database[pfn].lock_count)
		KeBugCheckEx(PFN_LIST_CORRUPT, PFN_UNLOCKED_TOO_OFTEN, pfn, 0, 0);
	uint32_t count = --pfn_writable(pfn)->lock_count;
	KeReleaseSpinLock(&pfn_lock, irql);
	return count;
}

uint32_t frame_lock_count(pfn_t pfn)
{
	return frame_state(pfn) == PFN_NOT_RAM ? 0 : pfn_database[pfn].lock_count;
}

void frame_free(pfn_t pfn, enum pfn_state expected)
{
	if (!database_ready || !is_ram(pfn))
		KeBugCheckEx(PFN_LIST_CORRUPT, PFN_CORRUPT_STATE, pfn, PFN_NOT_RAM, expected);
	KIRQL irql;
	KeAcquireSpinLock(&pfn_lock, &irql);
	if (pfn_database[pfn].lock_count)
		KeBugCheckEx(PFN_LIST_CORRUPT, PFN_FREED_WHILE_LOCKED, pfn, pfn_database[pfn].state,
			     pfn_database[pfn].lock_count);
	transition(pfn, expected, PFN_FREE);
	push_free(pfn);
	KeReleaseSpinLock(&pfn_lock, irql);
}

static uint64_t frames_above_4g(pfn_t first, pfn_t end)
{
	return end <= FOUR_GIB_PFN ? 0 : end - (first > FOUR_GIB_PFN ? first : FOUR_GIB_PFN);
}

/* transition() for each frame of [first, end), with the database page made writable and the
 * counters moved once per page: boot records hundreds of frames so, and under nested KVM each
 * guest instruction costs about 0.6 us. */
static void transition_range(pfn_t first, pfn_t end, enum pfn_state from, enum pfn_state to)
{
	for (pfn_t pfn = first; pfn < end;) {
		pfn_t page_end = (pfn / ENTRIES_PER_DATABASE_PAGE + 1) * ENTRIES_PER_DATABASE_PAGE;
		if (page_end > end)
			page_end = end;
		set_state(writable_leaving(pfn, from), pfn, from, to); /* may give the page a frame of its own */
		for (pfn_t next = pfn + 1; next < page_end; next++)
			set_state(&pfn_database[next], next, from, to);
		state_counts[from] -= page_end - pfn;
		state_counts[to] += page_end - pfn;
		pfn = page_end;
	}
}

uint64_t pfn_database_end(void)
{
	uint64_t bytes = (highest_pfn + 1) * sizeof(struct pfn_entry);
	return PFN_DATABASE_BASE + ((bytes + PAGE_OFFSET_MASK) & ~PAGE_OFFSET_MASK);
}

/* Runs on the kernel's own tables: maps every database page to the zero frame, then records the
 * frames boot used (which makes their pages writable). */
void pfn_database_init(void)
{
	pfn_t zero = frame_alloc(PFN_DATABASE);
	zero_frame_pa = zero << PAGE_SHIFT;
	memset(phys_to_virt(zero_frame_pa), 0, PAGE_SIZE);
	struct pt_view live = pt_live();
	uint64_t pages = (pfn_database_end() - PFN_DATABASE_BASE) >> PAGE_SHIFT;
	struct tlb_flush flush = pt_set_range(&live, PFN_DATABASE_BASE, 1, pages, pte_kernel_leaf(zero_frame_pa, 1, PROT_READ), 0);
	if (!flush.changed) /* carving cannot run out before RAM does */
		KeBugCheckEx(INSTALL_MORE_MEMORY, PFN_DATABASE_BASE, pages, 0, 0);
	tlb_flush_not_needed(flush);
	for (unsigned i = 0; i < ram_count; i++) {
		total_frames += ram[i].end - ram[i].first;
		above_4g_total += frames_above_4g(ram[i].first, ram[i].end);
	}
	_Static_assert(PFN_FREE == 0, "a zero entry is a free frame");
	state_counts[PFN_FREE] = total_frames;
	state_counts[PFN_NOT_RAM] = highest_pfn + 1 - total_frames;
	above_4g_free = above_4g_total;
	for (unsigned i = 0; i < ram_count && ram[i].first < LOW_MEMORY_END_PFN; i++)
		transition_range(ram[i].first, ram[i].end < LOW_MEMORY_END_PFN ? ram[i].end : LOW_MEMORY_END_PFN,
				 PFN_FREE, PFN_FIRMWARE);
	transition_range(image_first, image_end, PFN_FREE, PFN_KERNEL_IMAGE);
	for (unsigned i = 0; i < boot_run_count; i++) { /* the runs grow while pages become writable */
		const struct boot_run *b = &boot_runs[i];
		transition_range(b->first, b->first + b->count, PFN_FREE, b->state);
		above_4g_free -= frames_above_4g(b->first, b->first + b->count);
	}
	database_ready = true;
}

struct frame_stats frame_stats(void)
{
	return (struct frame_stats){total_frames, state_counts[PFN_FREE], highest_pfn, above_4g_total,
				    above_4g_total - above_4g_free};
}

unsigned ram_ranges(const struct ram_range **ranges)
{
	*ranges = ram;
	return ram_count;
}

uint64_t frames_in_state(enum pfn_state state)
{
	return state_counts[state];
}

const char *pfn_state_name(enum pfn_state state)
{
	static const char *const names[PFN_STATE_COUNT] = {
		[PFN_NOT_RAM] = "not-ram",	       [PFN_FREE] = "free",
		[PFN_FIRMWARE] = "firmware",	       [PFN_KERNEL_IMAGE] = "kernel-image",
		[PFN_PAGE_TABLE] = "page-table",     [PFN_DATABASE] = "pfn-database",
		[PFN_KERNEL_STACK] = "kernel-stack", [PFN_POOL] = "pool",
		[PFN_MDL_PAGES] = "mdl-pages",       [PFN_CONTIGUOUS] = "contiguous",
	};
	return state < PFN_STATE_COUNT ? names[state] : "?";
}
