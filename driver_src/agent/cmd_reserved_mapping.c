/* Reserved-mapping DDIs on the agent channel (docs/ddi/reserved-mappings.md). */
#include "protocol.h"
#include "reserved_mapping.h"

static void answer_va(const struct request *r, PVOID va)
{
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void allocate_mapping_address(const struct request *r)
{
	if (!argument_fits_ulong(r, "tag", r->values[1].integer))
		return;
	answer_va(r, MmAllocateMappingAddress(r->values[0].integer, (ULONG)r->values[1].integer));
}

static void allocate_mapping_address_ex(const struct request *r)
{
	if (!argument_fits_ulong(r, "tag", r->values[1].integer) ||
	    !argument_fits_ulong(r, "flags", r->values[2].integer))
		return;
	answer_va(r, MmAllocateMappingAddressEx(r->values[0].integer, (ULONG)r->values[1].integer,
						(ULONG)r->values[2].integer));
}

static void free_mapping_address(const struct request *r)
{
	if (!argument_fits_ulong(r, "tag", r->values[1].integer))
		return;
	MmFreeMappingAddress((PVOID)r->values[0].integer, (ULONG)r->values[1].integer);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("MmAllocateMappingAddress", "ii", "<bytes:integer> <tag:integer>", allocate_mapping_address);
AGENT_COMMAND("MmAllocateMappingAddressEx", "iii", "<bytes:integer> <tag:integer> <flags:integer>",
	      allocate_mapping_address_ex);
AGENT_COMMAND("MmFreeMappingAddress", "ii", "<va:integer> <tag:integer>", free_mapping_address);

static void map_with_reserved_mapping(const struct request *r)
{
	if (!argument_fits_ulong(r, "tag", r->values[1].integer))
		return;
	answer_va(r, MmMapLockedPagesWithReservedMapping((PVOID)r->values[0].integer, (ULONG)r->values[1].integer,
							 (PMDL)r->values[2].integer,
							 (MEMORY_CACHING_TYPE)r->values[3].integer));
}

static void unmap_reserved_mapping(const struct request *r)
{
	if (!argument_fits_ulong(r, "tag", r->values[1].integer))
		return;
	MmUnmapReservedMapping((PVOID)r->values[0].integer, (ULONG)r->values[1].integer, (PMDL)r->values[2].integer);
	frame_open_response(r->id);
	frame_close();
}

AGENT_COMMAND("MmMapLockedPagesWithReservedMapping", "iiii",
	      "<va:integer> <tag:integer> <mdl:integer> <cache_type:integer>", map_with_reserved_mapping);
AGENT_COMMAND("MmUnmapReservedMapping", "iii", "<va:integer> <tag:integer> <mdl:integer>", unmap_reserved_mapping);
