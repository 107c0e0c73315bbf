/* Pool DDIs on the agent channel (docs/agent-protocol.md). */
#include "ntddk.h"
#include "protocol.h"

static void allocate_pool(const struct request *r)
{
	uint64_t type = r->values[0].integer, bytes = r->values[1].integer, tag = r->values[2].integer;
	if (type != NonPagedPool && type != NonPagedPoolNx) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "pool_type must be NonPagedPool (0) or NonPagedPoolNx (512)");
		return;
	}
	if (!argument_fits_ulong(r, "tag", tag))
		return;
	PVOID va = ExAllocatePoolWithTag((POOL_TYPE)type, bytes, (ULONG)tag);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void free_pool(const struct request *r)
{
	uint64_t tag = r->values[1].integer;
	if (!argument_fits_ulong(r, "tag", tag))
		return;
	ExFreePoolWithTag((PVOID)r->values[0].integer, (ULONG)tag);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("ExAllocatePoolWithTag", "iii", "<pool_type:integer> <bytes:integer> <tag:integer>", allocate_pool);
AGENT_COMMAND("ExFreePoolWithTag", "ii", "<va:integer> <tag:integer>", free_pool);
