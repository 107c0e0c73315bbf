/* Pool DDIs on the agent channel (docs/agent-protocol.md, docs/ddi/pool.md). */
#include "ntddk.h"
#include "pool.h"
#include "protocol.h"

static void answer_va(const struct request *r, PVOID va)
{
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void allocate_pool(const struct request *r)
{
	uint64_t type = r->values[0].integer, bytes = r->values[1].integer, tag = r->values[2].integer;
	if (!argument_fits_ulong(r, "pool_type", type) || !argument_fits_ulong(r, "tag", tag))
		return;
	answer_va(r, ExAllocatePoolWithTag((POOL_TYPE)type, bytes, (ULONG)tag));
}

static void allocate_pool2(const struct request *r)
{
	uint64_t flags = r->values[0].integer, bytes = r->values[1].integer, tag = r->values[2].integer;
	if (!argument_fits_ulong(r, "tag", tag))
		return;
	answer_va(r, ExAllocatePool2(flags, bytes, (ULONG)tag));
}

static void free_pool_with_tag(const struct request *r)
{
	uint64_t tag = r->values[1].integer;
	if (!argument_fits_ulong(r, "tag", tag))
		return;
	ExFreePoolWithTag((PVOID)r->values[0].integer, (ULONG)tag);
	frame_open_response(r->id);
	frame_close();
}

static void free_pool(const struct request *r)
{
	ExFreePool((PVOID)r->values[0].integer);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("ExAllocatePoolWithTag", "iii", "<pool_type:integer> <bytes:integer> <tag:integer>", allocate_pool);
AGENT_COMMAND("ExAllocatePool2", "iii", "<flags:integer> <bytes:integer> <tag:integer>", allocate_pool2);
AGENT_COMMAND("ExFreePoolWithTag", "ii", "<va:integer> <tag:integer>", free_pool_with_tag);
AGENT_COMMAND("ExFreePool", "i", "<va:integer>", free_pool);
