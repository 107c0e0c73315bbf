/*
 * Pool (ddi-spec §11): ExAllocatePoolWithTag, ExAllocatePool2, ExFreePoolWithTag and ExFreePool
 * over a 1 GiB VA region after the PFN database, mapped in 4 KiB pages backed by frames from the
 * allocator. NonPagedPool is executable (NT's NonPagedPoolExecute); NonPagedPoolNx is not.
 * [DECISION] PagedPool is nonpaged memory (this kernel never pages), NX, on pages of its own so a
 * free can tell its IRQL rule (<= APC_LEVEL) from the nonpaged one (<= DISPATCH_LEVEL).
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
#include "kstring.h"
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
	uint8_t pool_type; /* [DECISION] 0 free, 1 NonPagedPool, 2 NonPagedPoolNx (512 does not fit), 3 PagedPool */
	uint32_t pool_tag;
	uint64_t process_billed;
};
_Static_assert(sizeof(struct pool_header) == POOL_UNIT, "POOL_HEADER is 16 bytes on x64");

/* What memory a block is: the pool type it came from, as its header and its pages record it. */
enum pool_kind { KIND_EXECUTE = 1, KIND_NX, KIND_PAGED };
enum { BLOCK_FREE };
enum page_use { PAGE_UNUSED, PAGE_SMALL_EXECUTE, PAGE_SMALL_NX, PAGE_SMALL_PAGED, PAGE_BIG, PAGE_BIG_PAGED };
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
/* The pool lock: everything below, from the page map to the tag counts. */
static KSPIN_LOCK pool_lock;
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

static bool map_page(uint64_t index, enum pool_kind kind)
{
	pfn_t pfn = frame_alloc(PFN_POOL);
	if (pfn == PFN_NONE)
		return false;
	struct pt_view live = pt_live();
	enum protection protection = kind == KIND_EXECUTE ? PROT_READ_WRITE_EXECUTE : PROT_READ_WRITE;
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
static uint64_t reserve_pages(uint64_t count, enum page_use use, enum pool_kind kind)
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
			if (!map_page(first + n, kind)) {
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

static enum page_use small_page_use(enum pool_kind kind)
{
	return kind == KIND_EXECUTE ? PAGE_SMALL_EXECUTE : kind == KIND_NX ? PAGE_SMALL_NX : PAGE_SMALL_PAGED;
}

static void *allocate_small(enum pool_kind kind, uint64_t bytes, uint32_t tag)
{
	unsigned units = 1 + (unsigned)((bytes + POOL_UNIT - 1) / POOL_UNIT);
	enum page_use use = small_page_use(kind);
	for (uint64_t i = 0; i < pages_high_water; i++) {
		void *block = page_use[i] == use ? carve(page_va(i), units, (uint8_t)kind, tag) : 0;
		if (block)
			return block;
	}
	uint64_t page = reserve_pages(1, use, kind);
	if (!page)
		return 0;
	/* A new page: one free block of BLOCK_UNITS_MAX units and one of the last unit. */
	*header_at(page, 0) = (struct pool_header){.block_size = BLOCK_UNITS_MAX};
	*header_at(page, BLOCK_UNITS_MAX) = (struct pool_header){.previous_size = BLOCK_UNITS_MAX, .block_size = 1};
	return carve(page, units, (uint8_t)kind, tag);
}

static void *allocate_big(enum pool_kind kind, uint64_t bytes, uint32_t tag)
{
	struct big_allocation *slot = 0;
	for (unsigned i = 0; i < BIG_ALLOCATIONS_MAX && !slot; i++)
		if (big_allocations[i].state != BIG_LIVE)
			slot = &big_allocations[i];
	uint64_t pages = (bytes + PAGE_OFFSET_MASK) / PAGE_SIZE;
	uint64_t va = slot ? reserve_pages(pages, kind == KIND_PAGED ? PAGE_BIG_PAGED : PAGE_BIG, kind) : 0;
	if (!va)
		return 0;
	*slot = (struct big_allocation){va, pages, tag, BIG_LIVE};
	return (void *)va;
}

static POOL_TYPE pool_type_of(enum pool_kind kind)
{
	return kind == KIND_EXECUTE ? NonPagedPool : kind == KIND_NX ? NonPagedPoolNx : PagedPool;
}

static KIRQL highest_irql(enum pool_kind kind)
{
	return kind == KIND_PAGED ? APC_LEVEL : DISPATCH_LEVEL;
}

/* Bugchecks at an IRQL the pool type does not allow, then for a zero-byte request (verifier). */
static void check_allocation(enum pool_kind kind, uint64_t bytes)
{
	KIRQL irql = KeGetCurrentIrql();
	if (irql > highest_irql(kind))
		KeBugCheckEx(BAD_POOL_CALLER, POOL_ALLOCATE_AT_BAD_IRQL, irql, pool_type_of(kind), bytes);
	if (!bytes)
		verifier_violation(VERIFIER_POOL_ZERO_BYTES, irql, pool_type_of(kind), 0);
}

static bool is_alphanumeric(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* [DECISION] a tag with no letter or digit in any of its four bytes is "without letters/digits". */
static bool tag_has_alphanumeric(uint32_t tag)
{
	for (unsigned i = 0; i < 4; i++)
		if (is_alphanumeric((uint8_t)(tag >> (8 * i))))
			return true;
	return false;
}

/* 0 when nothing is left; the charge goes to the tag as freeing will credit it. */
static void *allocate(enum pool_kind kind, uint64_t bytes, uint32_t tag, bool page_aligned)
{
	if (bytes > NONPAGED_POOL_SIZE)
		return 0;
	bool small = bytes <= POOL_SMALL_MAX && !page_aligned;
	KIRQL irql;
	KeAcquireSpinLock(&pool_lock, &irql);
	void *block = small ? allocate_small(kind, bytes, tag) : allocate_big(kind, bytes, tag);
	if (block) {
		uint64_t charged = small ? (uint64_t)(((struct pool_header *)block - 1)->block_size - 1) * POOL_UNIT
					 : (bytes + PAGE_OFFSET_MASK) & ~PAGE_OFFSET_MASK;
		account(tag, (int64_t)charged);
	}
	KeReleaseSpinLock(&pool_lock, irql);
	return block;
}

PVOID ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag)
{
	enum pool_kind kind;
	if (PoolType == NonPagedPool)
		kind = KIND_EXECUTE;
	else if (PoolType == NonPagedPoolNx)
		kind = KIND_NX;
	else if (PoolType == PagedPool)
		kind = KIND_PAGED;
	else
		return 0;
	check_allocation(kind, NumberOfBytes);
	uint64_t caller = (uint64_t)__builtin_return_address(0);
	if (!Tag)
		KeBugCheckEx(BAD_POOL_CALLER, POOL_TAG_ZERO, PoolType, NumberOfBytes, caller);
	if (Tag == POOL_TAG_RESERVED_BIG)
		KeBugCheckEx(BAD_POOL_CALLER, POOL_TAG_BIG, PoolType, NumberOfBytes, caller);
	if (!tag_has_alphanumeric(Tag))
		KeBugCheckEx(BAD_POOL_CALLER, POOL_TAG_NOT_ALPHANUMERIC, Tag, PoolType, caller);
	return allocate(kind, NumberOfBytes, Tag, false);
}

#define POOL_FLAGS_REQUIRED_KNOWN                                                                             \
	(POOL_FLAG_USE_QUOTA | POOL_FLAG_UNINITIALIZED | POOL_FLAG_SESSION | POOL_FLAG_CACHE_ALIGNED |        \
	 POOL_FLAG_RAISE_ON_FAILURE | POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE | POOL_FLAG_PAGED)
#define POOL_FLAGS_TYPE (POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE | POOL_FLAG_PAGED)

/*
 * [DECISION] Required flags this kernel cannot honour fail the call: USE_QUOTA (no process to
 * charge) and SESSION (no sessions), as do the reserved bits and any unknown low bit. Exactly one
 * of NON_PAGED, NON_PAGED_EXECUTE, PAGED is required. CACHE_ALIGNED is honoured by page alignment.
 */
static bool pool2_kind(POOL_FLAGS flags, enum pool_kind *kind)
{
	uint64_t required = flags & 0xFFFFFFFF;
	if (required & ~(uint64_t)POOL_FLAGS_REQUIRED_KNOWN || required & (POOL_FLAG_USE_QUOTA | POOL_FLAG_SESSION))
		return false;
	switch (required & POOL_FLAGS_TYPE) {
	case POOL_FLAG_NON_PAGED:
		*kind = KIND_NX;
		return true;
	case POOL_FLAG_NON_PAGED_EXECUTE:
		*kind = KIND_EXECUTE;
		return true;
	case POOL_FLAG_PAGED:
		*kind = KIND_PAGED;
		return true;
	default:
		return false;
	}
}

/* [DECISION] RAISE_ON_FAILURE raises STATUS_INSUFFICIENT_RESOURCES; with no handler in this kernel
 * that is NT's unhandled kernel exception, KMODE_EXCEPTION_NOT_HANDLED (P2 the caller). */
static void *pool2_failed(POOL_FLAGS flags, uint64_t caller)
{
	if (flags & POOL_FLAG_RAISE_ON_FAILURE)
		KeBugCheckEx(KMODE_EXCEPTION_NOT_HANDLED, (ULONG)STATUS_INSUFFICIENT_RESOURCES, caller, 0, 0);
	return 0;
}

PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag)
{
	uint64_t caller = (uint64_t)__builtin_return_address(0);
	enum pool_kind kind;
	if (!pool2_kind(Flags, &kind))
		return pool2_failed(Flags, caller);
	check_allocation(kind, NumberOfBytes);
	if (!Tag)
		return pool2_failed(Flags, caller);
	void *block = allocate(kind, NumberOfBytes, Tag, Flags & POOL_FLAG_CACHE_ALIGNED);
	if (!block)
		return pool2_failed(Flags, caller);
	if (!(Flags & POOL_FLAG_UNINITIALIZED))
		memset(block, 0, NumberOfBytes);
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

/* NT's MmSystemRangeStart: the lowest canonical address of the kernel half. */
static uint64_t system_range_start(void)
{
	return ~0ULL << (paging_levels == 5 ? 56 : 47);
}

void ExFreePoolWithTag(PVOID P, ULONG Tag)
{
	uint64_t va = (uint64_t)P;
	if (!(va >> 63)) /* [DECISION] the user half: every address with bit 63 clear */
		bad_pool_caller(POOL_FREE_USER_ADDRESS, va, system_range_start(), 0, Tag);
	if (va < nonpaged_pool_base || va >= nonpaged_pool_base + NONPAGED_POOL_SIZE)
		bad_pool_caller(POOL_NEVER_ALLOCATED, va, 0, 0, Tag);
	/* The IRQL rule comes first, before the lock raises the IRQL: the page is the caller's, so its
	 * use cannot change under this read unless the free is bad anyway. */
	uint64_t page = (va - nonpaged_pool_base) / PAGE_SIZE;
	bool paged = page_use[page] == PAGE_SMALL_PAGED || page_use[page] == PAGE_BIG_PAGED;
	KIRQL irql = KeGetCurrentIrql();
	if (irql > highest_irql(paged ? KIND_PAGED : KIND_NX))
		KeBugCheckEx(BAD_POOL_CALLER, POOL_FREE_AT_BAD_IRQL, irql, paged ? PagedPool : NonPagedPool, va);
	KeAcquireSpinLock(&pool_lock, &irql);
	enum page_use use = page_use[page];
	bool page_aligned = !(va & PAGE_OFFSET_MASK);
	bool big = use == PAGE_BIG || use == PAGE_BIG_PAGED || use == PAGE_UNUSED; /* unused: maybe freed before */
	if (page_aligned && big)
		free_big(va, Tag);
	else if (!page_aligned && (use == PAGE_SMALL_EXECUTE || use == PAGE_SMALL_NX || use == PAGE_SMALL_PAGED))
		free_small(va, Tag);
	else
		bad_pool_caller(POOL_INVALID_ADDRESS, va, 0, 0, Tag);
	KeReleaseSpinLock(&pool_lock, irql);
}

void ExFreePool(PVOID P)
{
	ExFreePoolWithTag(P, 0);
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
