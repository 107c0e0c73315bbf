/* I/O-space DDIs and MmGetVirtualForPhysical on the agent channel (docs/ddi/iospace-contiguous.md). */
#include "iospace.h"
#include "protocol.h"

static void map_io_space(const struct request *r)
{
	uint64_t pa = r->values[0].integer, bytes = r->values[1].integer, cache_type = r->values[2].integer;
	if (!argument_fits_ulong(r, "cache_type", cache_type))
		return;
	PHYSICAL_ADDRESS physical = {.QuadPart = (LONGLONG)pa};
	PVOID va = MmMapIoSpace(physical, bytes, (MEMORY_CACHING_TYPE)(int32_t)cache_type);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void map_io_space_ex(const struct request *r)
{
	uint64_t pa = r->values[0].integer, bytes = r->values[1].integer, protect = r->values[2].integer;
	if (!argument_fits_ulong(r, "protect", protect))
		return;
	PHYSICAL_ADDRESS physical = {.QuadPart = (LONGLONG)pa};
	PVOID va = MmMapIoSpaceEx(physical, bytes, (ULONG)protect);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

static void unmap_io_space(const struct request *r)
{
	MmUnmapIoSpace((PVOID)r->values[0].integer, r->values[1].integer);
	frame_open_response(r->id);
	frame_close();
}

/* One 32-bit load, as device registers need (QEMU's local APIC ignores narrower reads). */
static void read_register_ulong(const struct request *r)
{
	uint64_t va = r->values[0].integer;
	if (va & 3) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "the register address must be 4-byte aligned");
		return;
	}
	uint32_t value = *(volatile uint32_t *)va;
	frame_open_response(r->id);
	frame_hex("value", value);
	frame_close();
}

static void write_register_ulong(const struct request *r)
{
	uint64_t va = r->values[0].integer, value = r->values[1].integer;
	if (va & 3) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "the register address must be 4-byte aligned");
		return;
	}
	if (!argument_fits_ulong(r, "value", value))
		return;
	*(volatile uint32_t *)va = (uint32_t)value;
	frame_open_response(r->id);
	frame_close();
}

static void get_virtual_for_physical(const struct request *r)
{
	PHYSICAL_ADDRESS physical = {.QuadPart = (LONGLONG)r->values[0].integer};
	PVOID va = MmGetVirtualForPhysical(physical);
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_close();
}

AGENT_COMMAND("MmMapIoSpace", "iii", "<pa:integer> <bytes:integer> <cache_type:integer>", map_io_space);
AGENT_COMMAND("MmMapIoSpaceEx", "iii", "<pa:integer> <bytes:integer> <protect:integer>", map_io_space_ex);
AGENT_COMMAND("MmUnmapIoSpace", "ii", "<va:integer> <bytes:integer>", unmap_io_space);
AGENT_COMMAND("READ_REGISTER_ULONG", "i", "<va:integer>", read_register_ulong);
AGENT_COMMAND("WRITE_REGISTER_ULONG", "ii", "<va:integer> <value:integer>", write_register_ulong);
AGENT_COMMAND("MmGetVirtualForPhysical", "i", "<pa:integer>", get_virtual_for_physical);
