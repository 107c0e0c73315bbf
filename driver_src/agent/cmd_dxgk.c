/* DXGK physical-memory-object callbacks on the agent channel (docs/ddi/dxgk.md): each command fills
 * the DXGKARGCB_* structure from its values and answers with the structure's out fields. */
#include "dxgk.h"
#include "protocol.h"

#define OBJECT_INFO_PFNS_MAX 512 /* the most PFNs one dxgk_object_info answer carries */

static void create(const struct request *r)
{
	const struct value *v = r->values;
	DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT a = {
		.hAdapter = (HANDLE)v[0].integer,
		.Size = v[1].integer,
		.Type = (DXGK_PHYSICAL_MEMORY_TYPE)v[2].integer,
		.CacheType = (DXGK_MEMORY_CACHING_TYPE)v[3].integer,
	};
	if (!argument_fits_ulong(r, "type", v[2].integer) || !argument_fits_ulong(r, "cache_type", v[3].integer))
		return;
	/* The union's members in declaration order, whichever Type names. */
	switch (a.Type) {
	case DXGK_PHYSICAL_MEMORY_TYPE_MDL:
		a.Mdl.LowAddress.QuadPart = (LONGLONG)v[4].integer;
		a.Mdl.HighAddress.QuadPart = (LONGLONG)v[5].integer;
		a.Mdl.SkipBytes.QuadPart = (LONGLONG)v[6].integer;
		a.Mdl.Flags = (UINT)v[7].integer;
		break;
	case DXGK_PHYSICAL_MEMORY_TYPE_CONTIGUOUS_MEMORY:
		a.ContiguousMemory.LowestAcceptableAddress.QuadPart = (LONGLONG)v[4].integer;
		a.ContiguousMemory.HighestAcceptableAddress.QuadPart = (LONGLONG)v[5].integer;
		a.ContiguousMemory.BoundaryAddressMultiple.QuadPart = (LONGLONG)v[6].integer;
		break;
	case DXGK_PHYSICAL_MEMORY_TYPE_SECTION:
		a.Section.DesiredAccess = (ACCESS_MASK)v[4].integer;
		a.Section.ObjectAttributes = (POBJECT_ATTRIBUTES)v[5].integer;
		a.Section.PageProtection = (ULONG)v[6].integer;
		a.Section.AllocationAttributes = (ULONG)v[7].integer;
		break;
	default:
		a.IOSpace.BaseAddress.QuadPart = (LONGLONG)v[4].integer;
		break;
	}
	NTSTATUS status = DxgkCbCreatePhysicalMemoryObject(&a);
	frame_open_response(r->id);
	frame_hex("status", (uint32_t)status);
	frame_hex("handle", (uint64_t)a.hPhysicalMemoryObject);
	frame_hex("adapter_memory_object", (uint64_t)a.hAdapterMemoryObject);
	frame_close();
}

static void map(const struct request *r)
{
	if (!argument_fits_ulong(r, "access_mode", r->values[1].integer))
		return;
	DXGKARGCB_MAP_PHYSICAL_MEMORY a = {
		.hPhysicalMemoryObject = (HANDLE)r->values[0].integer,
		.AccessMode = (DXGK_ACCESS_MODE)r->values[1].integer,
		.Offset = r->values[2].integer,
		.Size = r->values[3].integer,
	};
	NTSTATUS status = DxgkCbMapPhysicalMemory(&a);
	frame_open_response(r->id);
	frame_hex("status", (uint32_t)status);
	frame_hex("offset", a.Offset);
	frame_hex("size", a.Size);
	frame_hex("mapped_address", (uint64_t)a.pMappedAddress);
	frame_close();
}

static void unmap(const struct request *r)
{
	DXGKARGCB_UNMAP_PHYSICAL_MEMORY a = {(HANDLE)r->values[0].integer, (PVOID)r->values[1].integer,
					     r->values[2].integer};
	DxgkCbUnmapPhysicalMemory(&a);
	frame_open_response(r->id);
	frame_close();
}

static void destroy(const struct request *r)
{
	DXGKARGCB_DESTROY_PHYSICAL_MEMORY_OBJECT a = {(HANDLE)r->values[0].integer, (HANDLE)r->values[1].integer};
	DxgkCbDestroyPhysicalMemoryObject(&a);
	frame_open_response(r->id);
	frame_close();
}

static void open(const struct request *r)
{
	DXGKARGCB_OPEN_PHYSICAL_MEMORY_OBJECT a = {(HANDLE)r->values[0].integer, (HANDLE)r->values[1].integer, 0};
	NTSTATUS status = DxgkCbOpenPhysicalMemoryObject(&a);
	frame_open_response(r->id);
	frame_hex("status", (uint32_t)status);
	frame_hex("adapter_memory_object", (uint64_t)a.hAdapterMemoryObject);
	frame_close();
}

static void close(const struct request *r)
{
	DXGKARGCB_CLOSE_PHYSICAL_MEMORY_OBJECT a = {(HANDLE)r->values[0].integer};
	DxgkCbClosePhysicalMemoryObject(&a);
	frame_open_response(r->id);
	frame_close();
}

static void object_info(const struct request *r)
{
	HANDLE handle = (HANDLE)r->values[0].integer;
	struct dxgk_object_info info;
	if (!dxgk_object_query(handle, &info)) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "handle names no live DXGK object");
		return;
	}
	uint64_t shown = info.pages < OBJECT_INFO_PFNS_MAX ? info.pages : OBJECT_INFO_PFNS_MAX;
	uint8_t pfns[OBJECT_INFO_PFNS_MAX * 8];
	for (uint64_t i = 0; i < shown; i++) {
		uint64_t pfn = dxgk_object_pfn(handle, i);
		for (unsigned b = 0; b < 8; b++)
			pfns[i * 8 + b] = (uint8_t)(pfn >> (8 * b));
	}
	frame_open_response(r->id);
	frame_decimal("type", info.type);
	frame_decimal("cache_type", info.cache);
	frame_hex("size", info.size);
	frame_decimal("pages", info.pages);
	frame_decimal("views", info.views);
	frame_bytes("pfns", pfns, shown * 8);
	frame_close();
}

static void report_outstanding(void)
{
	frame_decimal("dxgk_objects", dxgk_live_objects());
	frame_decimal("dxgk_mappings", dxgk_live_views());
}
OUTSTANDING_REPORTER(report_outstanding);

AGENT_COMMAND("DxgkCbCreatePhysicalMemoryObject", "iiiiiiii",
	      "<adapter:integer> <size:integer> <type:integer> <cache_type:integer> <u0:integer> <u1:integer> "
	      "<u2:integer> <u3:integer>",
	      create);
AGENT_COMMAND("DxgkCbMapPhysicalMemory", "iiii", "<handle:integer> <access_mode:integer> <offset:integer> <size:integer>",
	      map);
AGENT_COMMAND("DxgkCbUnmapPhysicalMemory", "iii", "<handle:integer> <base_address:integer> <size:integer>", unmap);
AGENT_COMMAND("DxgkCbDestroyPhysicalMemoryObject", "ii", "<handle:integer> <adapter_memory_object:integer>", destroy);
AGENT_COMMAND("DxgkCbOpenPhysicalMemoryObject", "ii", "<handle:integer> <adapter:integer>", open);
AGENT_COMMAND("DxgkCbClosePhysicalMemoryObject", "i", "<adapter_memory_object:integer>", close);
AGENT_COMMAND("dxgk_object_info", "i", "<handle:integer>", object_info);
