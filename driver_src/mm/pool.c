/*
 * Nonpaged pool (ddi-spec §11): ExAllocatePoolWithTag and ExFreePoolWithTag over a 1 GiB VA
 * region after the PFN database, mapped in 4 KiB pages backed by frames from the allocator.
 * NonPagedPool is executable (NT's NonPagedPoolExecute); NonPagedPoolNx is not.
 *
 * - Up to POOL_SMALL_MAX bytes: carved from pool pages in 16-byte units, each block behind a
 *   16-byte NT POOL_HEADER, so blocks are 16-byte aligned and never cross a page. Pages holding
 *   small blocks stay in the pool once used.
 * - Larger: whole pages, page aligned, with no header; like NT's big-page table, a table keyed
 *   by address keeps tag and size. Freed pages go back to the frame allocator.
 * A bad free stops the kernel with BAD_POOL_CALLER and NT's parameters.
 */
#include "pool.h"
#include "bugcodes.h"
#include "console.h"
#include "frames.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"
#include "protocol.h"

#define POOL_UNIT 16
#define UNITS_PER_PAGE (PAGE_SIZE / POOL_UNIT)
#define BLOCK_UNITS_MAX 255 /* block_size is a byte */
#define POOL_SMALL_MAX ((BLOCK_UNITS_MAX - 1) * POOL_UNIT)
#define POOL_PAGES (NONPAGED_POOL_SIZE / PAGE_SIZE)
#define BIG_ALLOCATIONS_MAX 1024
#define POOL_TAGS_MAX 64

/* NT x64 POOL_HEADER. Sizes in 16-byte units, header included. */
struct pool_header {
	uint8_t previous_size; /* 0 for the first block of a page */
	uint8_t pool_index;
	uint8_t block_size;
	uint8_t pool_type; /* [DECISION] 0 free, 1 NonPagedPool, 2 NonPagedPoolNx (512 does not fit) */
	uint32_t pool_tag;
	uint64_t process_billed;
};
_Static_assert(sizeof(struct pool_header) == POOL_UNIT, "POOL_HEADER is 16 bytes on x64");

enum { BLOCK_FREE, BLOCK_EXECUTE, BLOCK_NX };
enum page_use { PAGE_UNUSED, PAGE_SMALL_EXECUTE, PAGE_SMALL_NX, PAGE_BIG };
enum big_state { BIG_EMPTY, BIG_LIVE, BIG_FREED };

struct big_allocation {
	uint64_t va, pages;
	uint32_t tag;
	enum big_state state; /* FREED entries stay until their VA is reused, to catch double frees */
};

struct tag_usage {
	uint32_t tag;
	uint64_t allocations, frees, bytes_outstanding;
};

uint64_t nonpaged_pool_base;
static uint8_t page_use[POOL_PAGES];
static uint64_t pages_high_water; /* no page at or above this index was ever used */
static struct big_allocation big_allocations[BIG_ALLOCATIONS_MAX];
static struct tag_usage tag_usage[POOL_TAGS_MAX]; /* the last entry also counts tags beyond */

void pool_init(void)
{
	nonpaged_pool_base = (pfn_database_end() + NONPAGED_POOL_ALIGN - 1) & ~(NONPAGED_POOL_ALIGN - 1);
}

static uint64_t page_va(uint64_t index)
{
	return nonpaged_pool_base + index * PAGE_SIZE;
}

static struct tag_usage *usage_of(uint32_t tag)
{
	for (unsigned i = 0; i < POOL_TAGS_MAX - 1; i++) {
		if (tag_usage[i].allocations && tag_usage[i].tag != tag)
			continue;
		tag_usage[i].tag = tag;
		return &tag_usage[i];
	}
	return &tag_usage[POOL_TAGS_MAX - 1];
}

static void account(uint32_t tag, int64_t bytes)
{
	struct tag_usage *u = usage_of(tag);
	if (bytes > 0)
		u->allocations++;
	else
		u->frees++;
	u->bytes_outstanding += (uint64_t)bytes;
}

static NORETURN void bad_pool_caller(uint64_t subcode, uint64_t p2, uint64_t p3, uint64_t p4, uint32_t tag)
{
	const struct tag_usage *u = usage_of(tag);
	const char *t = (const char *)&tag;
	kprintf("mmhil: pool tag '%c%c%c%c' (0x%08x): %lu allocations, %lu frees, %lu bytes outstanding\n",
		t[0], t[1], t[2], t[3], tag, u->allocations, u->frees, u->bytes_outstanding);
	KeBugCheckEx(BAD_POOL_CALLER, subcode, p2, p3, p4);
}

static void release_pages(uint64_t first, uint64_t count)
{
	struct pt_view live = pt_live();
	for (uint64_t i = first; i < first + count; i++) {
		uint64_t old;
		struct tlb_flush flush = pt_clear(&live, page_va(i), &old);
		tlb_flush(flush);
		frame_free((old & PTE_ADDR_MASK) >> PAGE_SHIFT, PFN_POOL);
		page_use[i] = PAGE_UNUSED;
	}
}

static bool map_page(uint64_t index, bool nx)
{
	pfn_t pfn = frame_alloc(PFN_POOL);
	if (pfn == PFN_NONE)
		return false;
	struct pt_view live = pt_live();
	enum protection protection = nx ? PROT_READ_WRITE : PROT_READ_WRITE_EXECUTE;
	struct tlb_flush flush = pt_set(&live, page_va(index), 1, pte_kernel_leaf(pfn << PAGE_SHIFT, 1, protection));
	bool mapped = flush.changed;
	tlb_flush(flush);
	if (!mapped)
		frame_free(pfn, PFN_POOL);
	return mapped;
}

static void forget_freed_big(uint64_t first, uint64_t count)
{
	for (unsigned i = 0; i < BIG_ALLOCATIONS_MAX; i++) {
		struct big_allocation *b = &big_allocations[i];
		if (b->state == BIG_FREED && b->va >= page_va(first) && b->va < page_va(first + count))
			b->state = BIG_EMPTY;
	}
}

/* First fit over the pool's VA; 0 when no run of free VA or no frame is left. */
static uint64_t reserve_pages(uint64_t count, enum page_use use, bool nx)
{
	uint64_t first = 0;
	while (first + count <= POOL_PAGES) {
		uint64_t n = 0;
		while (n < count && page_use[first + n] == PAGE_UNUSED)
			n++;
		if (n < count) {
			first += n + 1;
			continue;
		}
		for (n = 0; n < count; n++) {
			if (!map_page(first + n, nx)) {
				release_pages(first, n);
				return 0;
			}
			page_use[first + n] = (uint8_t)use;
		}
		forget_freed_big(first, count);
		if (first + count > pages_high_water)
			pages_high_water = first + count;
		return page_va(first);
	}
	return 0;
}

static struct pool_header *header_at(uint64_t page, unsigned unit)
{
	return (struct pool_header *)(page + unit * POOL_UNIT);
}

static void set_previous_size(uint64_t page, unsigned unit, unsigned previous_size)
{
	if (unit < UNITS_PER_PAGE)
		header_at(page, unit)->previous_size = (uint8_t)previous_size;
}

/* Takes units from the first free block of the page that has them; splits off the rest. */
static void *carve(uint64_t page, unsigned units, uint8_t type, uint32_t tag)
{
	for (unsigned unit = 0; unit < UNITS_PER_PAGE; unit += header_at(page, unit)->block_size) {
		struct pool_header *h = header_at(page, unit);
		if (h->pool_type != BLOCK_FREE || h->block_size < units)
			continue;
		unsigned rest = h->block_size - units;
		if (rest) {
			*header_at(page, unit + units) = (struct pool_header){.previous_size = (uint8_t)units,
									      .block_size = (uint8_t)rest};
			set_previous_size(page, unit + units + rest, rest);
		}
		*h = (struct pool_header){.previous_size = h->previous_size, .block_size = (uint8_t)units,
					  .pool_type = type, .pool_tag = tag};
		return h + 1;
	}
	return 0;
}

static void *allocate_small(bool nx, uint64_t bytes, uint32_t tag)
{
	unsigned units = 1 + (unsigned)((bytes + POOL_UNIT - 1) / POOL_UNIT);
	enum page_use use = nx ? PAGE_SMALL_NX : PAGE_SMALL_EXECUTE;
	uint8_t type = nx ? BLOCK_NX : BLOCK_EXECUTE;
	for (uint64_t i = 0; i < pages_high_water; i++) {
		void *block = page_use[i] == use ? carve(page_va(i), units, type, tag) : 0;
		if (block)
			return block;
	}
	uint64_t page = reserve_pages(1, use, nx);
	if (!page)
		return 0;
	/* A new page: one free block of BLOCK_UNITS_MAX units and one of the last unit. */
	*header_at(page, 0) = (struct pool_header){.block_size = BLOCK_UNITS_MAX};
	*header_at(page, BLOCK_UNITS_MAX) = (struct pool_header){.previous_size = BLOCK_UNITS_MAX, .block_size = 1};
	return carve(page, units, type, tag);
}

static void *allocate_big(bool nx, uint64_t bytes, uint32_t tag)
{
	struct big_allocation *slot = 0;
	for (unsigned i = 0; i < BIG_ALLOCATIONS_MAX && !slot; i++)
		if (big_allocations[i].state != BIG_LIVE)
			slot = &big_allocations[i];
	uint64_t pages = (bytes + PAGE_OFFSET_MASK) / PAGE_SIZE;
	uint64_t va = slot ? reserve_pages(pages, PAGE_BIG, nx) : 0;
	if (!va)
		return 0;
	*slot = (struct big_allocation){va, pages, tag, BIG_LIVE};
	return (void *)va;
}

PVOID ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag)
{
	if (PoolType != NonPagedPool && PoolType != NonPagedPoolNx)
		return 0;
	bool nx = PoolType == NonPagedPoolNx;
	uint64_t bytes = NumberOfBytes ? NumberOfBytes : 1; /* [DECISION] outside verifier mode */
	if (bytes > NONPAGED_POOL_SIZE)
		return 0;
	bool small = bytes <= POOL_SMALL_MAX;
	void *block = small ? allocate_small(nx, bytes, Tag) : allocate_big(nx, bytes, Tag);
	if (!block)
		return 0;
	/* Charged as freeing will credit it: whole units, or whole pages. */
	uint64_t charged = small ? (uint64_t)(((struct pool_header *)block - 1)->block_size - 1) * POOL_UNIT
				 : (bytes + PAGE_OFFSET_MASK) & ~PAGE_OFFSET_MASK;
	account(Tag, (int64_t)charged);
	return block;
}

static void free_big(uint64_t va, uint32_t tag)
{
	for (unsigned i = 0; i < BIG_ALLOCATIONS_MAX; i++) {
		struct big_allocation *b = &big_allocations[i];
		if (b->state == BIG_EMPTY || b->va != va)
			continue;
		if (b->state == BIG_FREED) /* big blocks have no header: P3 is 0 */
			bad_pool_caller(POOL_DOUBLE_FREE, 0, 0, va, b->tag);
		if (tag && tag != b->tag)
			bad_pool_caller(POOL_WRONG_TAG, va, b->tag, tag, b->tag);
		release_pages((va - nonpaged_pool_base) / PAGE_SIZE, b->pages);
		b->state = BIG_FREED;
		account(b->tag, -(int64_t)(b->pages * PAGE_SIZE));
		return;
	}
	bad_pool_caller(POOL_INVALID_ADDRESS, va, 0, 0, tag);
}

static uint64_t header_contents(const struct pool_header *h)
{
	return *(const uint64_t *)h;
}

/*
 * Finds the block whose header sits at unit, walking the page's chain. A header that is off the
 * chain but inside a free block belonged to a block already freed and merged: a double free.
 */
static struct pool_header *find_block(uint64_t page, unsigned target, uint64_t va, uint32_t tag)
{
	for (unsigned unit = 0; unit < UNITS_PER_PAGE;) {
		struct pool_header *h = header_at(page, unit);
		if (!h->block_size || unit + h->block_size > UNITS_PER_PAGE)
			bad_pool_caller(POOL_HEADER_CORRUPT, (uint64_t)h, header_contents(h), 0, tag);
		if (unit == target)
			return h;
		if (target < unit + h->block_size) {
			struct pool_header *stale = header_at(page, target);
			if (h->pool_type == BLOCK_FREE && stale->pool_type == BLOCK_FREE && stale->block_size)
				bad_pool_caller(POOL_DOUBLE_FREE, 0, header_contents(stale), va, tag);
			break;
		}
		unit += h->block_size;
	}
	bad_pool_caller(POOL_INVALID_ADDRESS, va, 0, 0, tag);
}

/* Merges with free neighbours, keeping every block within BLOCK_UNITS_MAX units. */
static void free_small(uint64_t va, uint32_t tag)
{
	uint64_t page = va & ~PAGE_OFFSET_MASK;
	if (va % POOL_UNIT)
		bad_pool_caller(POOL_INVALID_ADDRESS, va, 0, 0, tag);
	unsigned unit = (unsigned)((va & PAGE_OFFSET_MASK) / POOL_UNIT) - 1;
	struct pool_header *h = find_block(page, unit, va, tag);
	if (h->pool_type == BLOCK_FREE)
		bad_pool_caller(POOL_DOUBLE_FREE, 0, header_contents(h), va, tag);
	if (tag && tag != h->pool_tag)
		bad_pool_caller(POOL_WRONG_TAG, va, h->pool_tag, tag, h->pool_tag);
	account(h->pool_tag, -(int64_t)((h->block_size - 1) * POOL_UNIT));
	h->pool_type = BLOCK_FREE;

	unsigned start = unit, size = h->block_size;
	struct pool_header *next = start + size < UNITS_PER_PAGE ? header_at(page, start + size) : 0;
	if (next && next->pool_type == BLOCK_FREE && size + next->block_size <= BLOCK_UNITS_MAX)
		size += next->block_size;
	struct pool_header *prev = h->previous_size ? header_at(page, start - h->previous_size) : 0;
	if (prev && prev->pool_type == BLOCK_FREE && size + prev->block_size <= BLOCK_UNITS_MAX) {
		start -= prev->block_size;
		size += prev->block_size;
	}
	header_at(page, start)->block_size = (uint8_t)size;
	set_previous_size(page, start + size, size);
}

void ExFreePoolWithTag(PVOID P, ULONG Tag)
{
	uint64_t va = (uint64_t)P;
	if (va < nonpaged_pool_base || va >= nonpaged_pool_base + NONPAGED_POOL_SIZE)
		bad_pool_caller(POOL_NEVER_ALLOCATED, va, 0, 0, Tag);
	enum page_use use = page_use[(va - nonpaged_pool_base) / PAGE_SIZE];
	bool page_aligned = !(va & PAGE_OFFSET_MASK);
	if (page_aligned && (use == PAGE_BIG || use == PAGE_UNUSED)) /* unused: maybe a big block freed before */
		free_big(va, Tag);
	else if (!page_aligned && (use == PAGE_SMALL_EXECUTE || use == PAGE_SMALL_NX))
		free_small(va, Tag);
	else
		bad_pool_caller(POOL_INVALID_ADDRESS, va, 0, 0, Tag);
}

/* pool_bytes: everything outstanding; pool_tag_<tag as 8 hex digits>: each tag that holds bytes. */
static void report_pool(void)
{
	uint64_t total = 0;
	for (unsigned i = 0; i < POOL_TAGS_MAX; i++)
		total += tag_usage[i].bytes_outstanding;
	frame_decimal("pool_bytes", total);
	for (unsigned i = 0; i < POOL_TAGS_MAX - 1; i++) {
		if (!tag_usage[i].bytes_outstanding)
			continue;
		char key[] = "pool_tag_00000000";
		for (unsigned d = 0; d < 8; d++)
			key[sizeof(key) - 2 - d] = "0123456789abcdef"[tag_usage[i].tag >> (4 * d) & 0xF];
		frame_decimal(key, tag_usage[i].bytes_outstanding);
	}
}
OUTSTANDING_REPORTER(report_pool);
