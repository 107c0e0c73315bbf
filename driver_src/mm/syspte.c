#include "syspte.h"
#include "bugcodes.h"
#include "ntddk.h"
#include "pagetable.h"
#include "protocol.h"

#define WORD_BITS 64
#define WORDS ((SYSTEM_PTE_COUNT + WORD_BITS - 1) / WORD_BITS)

#define TABLES ((SYSTEM_PTE_COUNT + PT_ENTRIES - 1) / PT_ENTRIES)

/* The system-PTE lock: the bitmaps and the counts. */
static KSPIN_LOCK syspte_lock;
static pfn_t table_frames[TABLES]; /* table k maps pages 512k..512k+511 */
static uint64_t tables_linked[(TABLES + WORD_BITS - 1) / WORD_BITS];
static uint64_t in_use[WORDS];
static uint64_t starts[WORDS]; /* first page of each live allocation */
static uint64_t pages_in_use, allocations;

static bool test(const uint64_t *map, uint64_t i)
{
	return map[i / WORD_BITS] >> (i % WORD_BITS) & 1;
}

static void assign(uint64_t *map, uint64_t i, bool value)
{
	if (value)
		map[i / WORD_BITS] |= BIT(i % WORD_BITS);
	else
		map[i / WORD_BITS] &= ~BIT(i % WORD_BITS);
}

static uint64_t index_of(uint64_t va)
{
	return (va - SYSTEM_PTE_BASE) / PAGE_SIZE;
}

void syspte_set_aside_tables(void)
{
	for (uint64_t i = 0; i < TABLES; i++)
		table_frames[i] = frame_alloc(PFN_PAGE_TABLE);
}

void syspte_init(void)
{
	struct pt_view live = pt_live();
	if (!pt_prepare(&live, SYSTEM_PTE_BASE, 2))
		KeBugCheckEx(INSTALL_MORE_MEMORY, SYSTEM_PTE_BASE, 2, 0, 0);
}

/* Links the tables of pages first..last that no reservation reached before (under the lock). */
static void link_tables_locked(uint64_t first, uint64_t last)
{
	struct pt_view live = pt_live();
	for (uint64_t table = first / PT_ENTRIES; table <= last / PT_ENTRIES; table++)
		if (!test(tables_linked, table)) {
			pt_link_table(&live, SYSTEM_PTE_BASE + table * LEVEL_SIZE(2), 2, table_frames[table]);
			assign(tables_linked, table, true);
		}
}

bool syspte_contains(uint64_t va, uint64_t count)
{
	return va >= SYSTEM_PTE_BASE && va < SYSTEM_PTE_END && count <= index_of(SYSTEM_PTE_END) - index_of(va);
}

volatile uint64_t *syspte_entry(uint64_t va)
{
	return (volatile uint64_t *)SELFMAP_PTE_ADDRESS(paging_levels, va);
}

/* First fit, skipping whole words that are full. */
static uint64_t reserve_locked(uint64_t count)
{
	uint64_t run = 0;
	for (uint64_t i = 0; i < SYSTEM_PTE_COUNT; i++) {
		if (!(i % WORD_BITS) && in_use[i / WORD_BITS] == ~0ull && i + WORD_BITS <= SYSTEM_PTE_COUNT) {
			run = 0;
			i += WORD_BITS - 1;
			continue;
		}
		run = test(in_use, i) ? 0 : run + 1;
		if (run < count)
			continue;
		uint64_t first = i + 1 - count;
		for (uint64_t j = first; j <= i; j++)
			assign(in_use, j, true);
		assign(starts, first, true);
		pages_in_use += count;
		allocations++;
		return SYSTEM_PTE_BASE + first * PAGE_SIZE;
	}
	return 0;
}

uint64_t syspte_reserve(uint64_t count)
{
	if (!count || count > SYSTEM_PTE_COUNT)
		return 0;
	KIRQL irql;
	KeAcquireSpinLock(&syspte_lock, &irql);
	uint64_t va = reserve_locked(count);
	if (va)
		link_tables_locked(index_of(va), index_of(va) + count - 1);
	KeReleaseSpinLock(&syspte_lock, irql);
	return va;
}

/* Pages from i on that belong to the allocation starting at i. */
static uint64_t allocation_size(uint64_t i)
{
	uint64_t n = 1;
	while (i + n < SYSTEM_PTE_COUNT && test(in_use, i + n) && !test(starts, i + n))
		n++;
	return n;
}

void syspte_release(uint64_t va, uint64_t count)
{
	if ((va & PAGE_OFFSET_MASK) || !count || !syspte_contains(va, count))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, SYSPTE_RELEASE_NOT_RESERVED, va, count, 0);
	KIRQL irql;
	KeAcquireSpinLock(&syspte_lock, &irql);
	uint64_t first = index_of(va);
	if (!test(in_use, first))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, SYSPTE_RELEASE_ALREADY_FREE, va, count, 0);
	if (!test(starts, first))
		KeBugCheckEx(SYSTEM_PTE_MISUSE, SYSPTE_RELEASE_MID_ALLOCATION, va, count, 0);
	uint64_t size = allocation_size(first);
	if (size != count)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, SYSPTE_RELEASE_WRONG_COUNT, va, count, size);
	for (uint64_t i = first; i < first + count; i++) {
		volatile uint64_t *pte = syspte_entry(SYSTEM_PTE_BASE + i * PAGE_SIZE);
		if (*pte & PTE_P) /* a mapping the caller forgot: its TLB entry would outlive it */
			KeBugCheckEx(MEMORY_MANAGEMENT, MM_CORRUPTED_PTE, (uint64_t)pte, *pte, SYSTEM_PTE_BASE + i * PAGE_SIZE);
		*pte = 0;
		assign(in_use, i, false);
	}
	assign(starts, first, false);
	pages_in_use -= count;
	allocations--;
	KeReleaseSpinLock(&syspte_lock, irql);
}

uint64_t syspte_in_use(void)
{
	return pages_in_use;
}

static void report_system_ptes(void)
{
	frame_decimal("syspte_pages", pages_in_use);
	frame_decimal("syspte_allocations", allocations);
}
OUTSTANDING_REPORTER(report_system_ptes);
