/*
 * TEST HOOK, not a DDI: test_hook_set_pte_no_flush writes a raw PTE of the system-PTE region and
 * deliberately skips INVLPG. The TLB tests use it to show that a stale translation IS visible
 * under TCG when a flush is missing, which is what makes their "never stale through the DDIs"
 * result meaningful; the system-PTE tests use it to forge reservation headers and reach the
 * allocator's release checks. Nothing else may call it.
 */
#include "protocol.h"
#include "syspte.h"

static void set_pte_no_flush(const struct request *r)
{
	uint64_t va = r->values[0].integer, pte = r->values[1].integer;
	if (!syspte_contains(va, 1)) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "va must lie in the system-PTE region");
		return;
	}
	volatile uint64_t *slot = syspte_entry(va);
	uint64_t old = *slot;
	*slot = pte; /* no tlb_flush(), on purpose */
	frame_open_response(r->id);
	frame_hex("old_pte", old);
	frame_close();
}

AGENT_COMMAND("test_hook_set_pte_no_flush", "ii", "<va:integer> <pte:integer>", set_pte_no_flush);
