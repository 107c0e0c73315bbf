/* MmCopyMemory on the agent channel (docs/ddi/copy.md): the copy lands in a target buffer the
 * host reads back itself. */
#include "copy.h"
#include "protocol.h"

static void copy_memory(const struct request *r)
{
	uint64_t target = r->values[0].integer, source = r->values[1].integer, bytes = r->values[2].integer;
	uint64_t flags = r->values[3].integer;
	if (!argument_fits_ulong(r, "flags", flags))
		return;
	MM_COPY_ADDRESS address = {.VirtualAddress = (PVOID)source};
	SIZE_T transferred = 0;
	NTSTATUS status = MmCopyMemory((PVOID)target, address, bytes, (ULONG)flags, &transferred);
	frame_open_response(r->id);
	frame_hex("status", (uint32_t)status);
	frame_decimal("transferred", transferred);
	frame_close();
}

static void report_copy_pte(const struct request *r)
{
	frame_open_response(r->id);
	frame_hex("va", copy_pte_va());
	frame_close();
}

AGENT_COMMAND("MmCopyMemory", "iiii", "<target:integer> <source:integer> <bytes:integer> <flags:integer>",
	      copy_memory);
AGENT_COMMAND("copy_pte_va", "", "no values", report_copy_pte);
