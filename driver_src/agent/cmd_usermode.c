/* User mode on the agent channel (docs/ddi/usermode.md): user test pages, the ring-3 probe, and
 * kernel accesses to user pages with and without STAC (SMAP) or execution (SMEP). */
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "protocol.h"
#include "usermode.h"

#define USER_TEST_PAGES 16

static struct {
	uint64_t va;
	pfn_t pfn;
} test_pages[USER_TEST_PAGES];

static void page_allocate(const struct request *r)
{
	unsigned slot = 0;
	while (slot < USER_TEST_PAGES && test_pages[slot].va)
		slot++;
	uint64_t va = slot < USER_TEST_PAGES ? user_view_reserve(1) : 0;
	pfn_t pfn = va ? frame_alloc(PFN_MDL_PAGES) : PFN_NONE;
	if (va && pfn == PFN_NONE)
		user_view_release(va, 1);
	if (pfn == PFN_NONE) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "no user page left");
		return;
	}
	memset(phys_to_virt(pfn << PAGE_SHIFT), 0, PAGE_SIZE);
	user_map_page(va, pte_user_leaf(pfn << PAGE_SHIFT, true));
	test_pages[slot].va = va;
	test_pages[slot].pfn = pfn;
	frame_open_response(r->id);
	frame_hex("va", va);
	frame_hex("pfn", pfn);
	frame_close();
}

static void page_free(const struct request *r)
{
	uint64_t va = r->values[0].integer;
	for (unsigned slot = 0; slot < USER_TEST_PAGES; slot++) {
		if (!va || test_pages[slot].va != va)
			continue;
		user_unmap_page(va);
		user_view_release(va, 1);
		frame_free(test_pages[slot].pfn, PFN_MDL_PAGES);
		test_pages[slot].va = 0;
		frame_open_response(r->id);
		frame_close();
		return;
	}
	frame_error(r->id, ERROR_BAD_ARGUMENT, "va is not a user test page");
}

static void probe(const struct request *r)
{
	uint64_t va = r->values[0].integer, op = r->values[1].integer;
	if (!argument_at_most(r, "op", op, USER_PROBE_WRITE))
		return;
	if (!usermode_init()) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "user mode unavailable: no SYSCALL, or no frame for the user page tables");
		return;
	}
	struct user_probe_result result = usermode_probe(va, (unsigned)op, r->values[2].integer);
	frame_open_response(r->id);
	frame_boolean("completed", result.completed);
	frame_hex("value", result.value);
	frame_decimal("vector", result.vector);
	frame_hex("error", result.error);
	frame_hex("address", result.address);
	frame_hex("rip", result.rip);
	frame_close();
}

/* The kernel reads or writes 8 bytes at va itself; with stac, inside STAC/CLAC. */
static void kernel_access(const struct request *r)
{
	volatile uint64_t *p = (volatile uint64_t *)r->values[0].integer;
	bool write = r->values[1].integer, stac = r->values[3].integer;
	uint64_t value = r->values[2].integer;
	if (stac && !cpu.smap) { /* STAC is #UD without SMAP */
		frame_error(r->id, ERROR_BAD_ARGUMENT, "stac needs a CPU with SMAP");
		return;
	}
	if (stac)
		asm volatile("stac" ::: "memory");
	if (write)
		*p = value;
	else
		value = *p;
	if (stac)
		asm volatile("clac" ::: "memory");
	frame_open_response(r->id);
	frame_hex("value", value);
	frame_close();
}

/* The kernel calls va. Only with SMEP, which must stop it: without, ring-3 code would run in ring 0. */
static void kernel_execute(const struct request *r)
{
	if (!cpu.smep) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "kernel execution of user pages is tested only with SMEP");
		return;
	}
	((void (*)(void))r->values[0].integer)();
	frame_error(r->id, ERROR_BAD_ARGUMENT, "SMEP did not stop the call");
}

static void report_outstanding(void)
{
	uint64_t pages = 0;
	for (unsigned slot = 0; slot < USER_TEST_PAGES; slot++)
		pages += test_pages[slot].va != 0;
	frame_decimal("usermode_pages", pages);
}
OUTSTANDING_REPORTER(report_outstanding);

AGENT_COMMAND("user_page_allocate", "", "no values", page_allocate);
AGENT_COMMAND("user_page_free", "i", "<va:integer>", page_free);
AGENT_COMMAND("user_probe", "iii", "<va:integer> <op:integer> <value:integer>", probe);
AGENT_COMMAND("user_kernel_access", "iiii", "<va:integer> <write:integer> <value:integer> <stac:integer>",
	      kernel_access);
AGENT_COMMAND("user_kernel_execute", "i", "<va:integer>", kernel_execute);
