/* Contiguous-memory DDIs on the agent channel (docs/ddi/iospace-contiguous.md). */
#include "contiguous.h"
#include "protocol.h"

static void allocate_contiguous(const struct request *r)
{
	PHYSICAL_ADDRESS highest = {.QuadPart = (LONGLONG)r->values[1].integer};
	PVOID va = MmAllocateContiguousMemory(r->values[0].integer, highest);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void allocate_contiguous_specify_cache(const struct request *r)
{
	uint64_t cache_type = r->values[4].integer;
	if (!argument_fits_ulong(r, "cache_type", cache_type))
		return;
	PHYSICAL_ADDRESS lowest = {.QuadPart = (LONGLONG)r->values[1].integer};
	PHYSICAL_ADDRESS highest = {.QuadPart = (LONGLONG)r->values[2].integer};
	PHYSICAL_ADDRESS boundary = {.QuadPart = (LONGLONG)r->values[3].integer};
	PVOID va = MmAllocateContiguousMemorySpecifyCache(r->values[0].integer, lowest, highest, boundary,
							  (MEMORY_CACHING_TYPE)(int32_t)cache_type);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void allocate_contiguous_specify_cache_node(const struct request *r)
{
	uint64_t cache_type = r->values[4].integer, node = r->values[5].integer;
	if (!argument_fits_ulong(r, "cache_type", cache_type) || !argument_fits_ulong(r, "preferred_node", node))
		return;
	PHYSICAL_ADDRESS lowest = {.QuadPart = (LONGLONG)r->values[1].integer};
	PHYSICAL_ADDRESS highest = {.QuadPart = (LONGLONG)r->values[2].integer};
	PHYSICAL_ADDRESS boundary = {.QuadPart = (LONGLONG)r->values[3].integer};
	PVOID va = MmAllocateContiguousMemorySpecifyCacheNode(r->values[0].integer, lowest, highest, boundary,
							      (MEMORY_CACHING_TYPE)(int32_t)cache_type,
							      (NODE_REQUIREMENT)node);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void free_contiguous(const struct request *r)
{
	MmFreeContiguousMemory((PVOID)r->values[0].integer);
	frame_open_response(r->id);
	frame_close();
}

static void free_contiguous_specify_cache(const struct request *r)
{
	uint64_t cache_type = r->values[2].integer;
	if (!argument_fits_ulong(r, "cache_type", cache_type))
		return;
	MmFreeContiguousMemorySpecifyCache((PVOID)r->values[0].integer, r->values[1].integer,
					   (MEMORY_CACHING_TYPE)(int32_t)cache_type);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("MmAllocateContiguousMemory", "ii", "<bytes:integer> <highest:integer>", allocate_contiguous);
AGENT_COMMAND("MmAllocateContiguousMemorySpecifyCache", "iiiii",
	      "<bytes:integer> <lowest:integer> <highest:integer> <boundary:integer> <cache_type:integer>",
	      allocate_contiguous_specify_cache);
AGENT_COMMAND("MmAllocateContiguousMemorySpecifyCacheNode", "iiiiii",
	      "<bytes:integer> <lowest:integer> <highest:integer> <boundary:integer> <cache_type:integer> "
	      "<preferred_node:integer>",
	      allocate_contiguous_specify_cache_node);
AGENT_COMMAND("MmFreeContiguousMemory", "i", "<va:integer>", free_contiguous);
AGENT_COMMAND("MmFreeContiguousMemorySpecifyCache", "iii", "<va:integer> <bytes:integer> <cache_type:integer>",
	      free_contiguous_specify_cache);
