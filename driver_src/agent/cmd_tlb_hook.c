/*
 * TEST HOOKS, not DDIs: each breaks the flush discipline on purpose, so the TLB tests can show that
 * a stale translation IS visible under TCG when a flush is missing, which is what makes their
 * "never stale through the DDIs" results meaningful. Nothing else may call them.
 *
 * - test_hook_set_pte_no_flush writes a raw PTE of the system-PTE region and skips INVLPG; the
 *   system-PTE tests also use it to forge reservation headers and reach the allocator's checks.
 * - test_hook_skip_shootdown makes the next <count> flushes that need a TLB shootdown skip it (the
 *   local INVLPG still happens): the other CPUs keep the old translation.
 * - test_hook_invlpg flushes one VA on the CPU that runs it, to undo what a skipped shootdown left.
 */
#include "pagetable.h"
#include "protocol.h"
#include "syspte.h"
#include "x86.h"

static void set_pte_no_flush(const struct request *r)
{
	uint64_t va = r->values[0].integer, pte = r->values[1].integer;
	if (!syspte_contains(va, 1)) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "va must lie in the system-PTE region");
		return;
	}
	struct pt_view live = pt_live();
	if (pt_walk(&live, va).level != 1) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "va's page table does not exist yet: reserve its system PTEs first");
		return;
	}
	volatile uint64_t *slot = syspte_entry(va);
	uint64_t old = *slot;
	*slot = pte; /* no tlb_flush(), on purpose */
	frame_open_response(r->id);
	frame_hex("old_pte", old);
	frame_close();
}

static void skip_shootdown(const struct request *r)
{
	tlb_skip_remote_flushes(r->values[0].integer);
	frame_open_response(r->id);
	frame_close();
}

static void flush_here(const struct request *r)
{
	invlpg(r->values[0].integer);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("test_hook_set_pte_no_flush", "ii", "<va:integer> <pte:integer>", set_pte_no_flush);
AGENT_COMMAND("test_hook_skip_shootdown", "i", "<count:integer>", skip_shootdown);
AGENT_COMMAND("test_hook_invlpg", "i", "<va:integer>", flush_here);
