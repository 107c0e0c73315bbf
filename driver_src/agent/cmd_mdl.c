/* MDL DDIs on the agent channel (docs/ddi/mdl.md). Pointers pass through as NT passes them. */
#include "mdl.h"
#include "protocol.h"

#define ARG(i) (r->values[i].integer)
#define PTR(i) ((PVOID)ARG(i))

static PHYSICAL_ADDRESS physical(uint64_t value)
{
	return (PHYSICAL_ADDRESS){.QuadPart = (LONGLONG)value};
}

static void answer_pointer(const struct request *r, const char *key, const void *p)
{
	frame_open_response(r->id);
	frame_hex(key, (uint64_t)p);
	frame_close();
}

static void answer_done(const struct request *r)
{
	frame_open_response(r->id);
	frame_close();
}

static void io_allocate_mdl(const struct request *r)
{
	if (!argument_fits_ulong(r, "length", ARG(1)) || !argument_at_most(r, "secondary_buffer", ARG(2), 1) ||
	    !argument_at_most(r, "charge_quota", ARG(3), 1))
		return;
	answer_pointer(r, "mdl", IoAllocateMdl(PTR(0), (ULONG)ARG(1), (BOOLEAN)ARG(2), (BOOLEAN)ARG(3), PTR(4)));
}

static void io_free_mdl(const struct request *r)
{
	IoFreeMdl(PTR(0));
	answer_done(r);
}

static void mm_initialize_mdl(const struct request *r)
{
	PMDL mdl = PTR(0);
	MmInitializeMdl(mdl, PTR(1), ARG(2));
	answer_done(r);
}

static void mm_size_of_mdl(const struct request *r)
{
	frame_open_response(r->id);
	frame_decimal("size", MmSizeOfMdl(PTR(0), ARG(1)));
	frame_close();
}

static void mm_get_mdl_pfn_array(const struct request *r)
{
	PMDL mdl = PTR(0);
	answer_pointer(r, "pfn_array", MmGetMdlPfnArray(mdl));
}

static void mm_build_mdl_for_non_paged_pool(const struct request *r)
{
	MmBuildMdlForNonPagedPool(PTR(0));
	answer_done(r);
}

static void answer_raised(const struct request *r)
{
	frame_open_response(r->id);
	frame_hex("raised", (uint32_t)mdl_raised_status);
	frame_close();
}

static void mm_probe_and_lock_pages(const struct request *r)
{
	if (!argument_at_most(r, "access_mode", ARG(1), UserMode) ||
	    !argument_at_most(r, "operation", ARG(2), IoModifyAccess))
		return;
	MmProbeAndLockPages(PTR(0), (KPROCESSOR_MODE)ARG(1), (LOCK_OPERATION)ARG(2));
	answer_raised(r);
}

static void mm_unlock_pages(const struct request *r)
{
	MmUnlockPages(PTR(0));
	answer_done(r);
}

static void mm_allocate_pages_for_mdl_ex(const struct request *r)
{
	if (!argument_fits_ulong(r, "cache_type", ARG(4)) || !argument_fits_ulong(r, "flags", ARG(5)))
		return;
	answer_pointer(r, "mdl", MmAllocatePagesForMdlEx(physical(ARG(0)), physical(ARG(1)), physical(ARG(2)), ARG(3),
						       (MEMORY_CACHING_TYPE)(int32_t)ARG(4), (ULONG)ARG(5)));
}

static void mm_allocate_pages_for_mdl(const struct request *r)
{
	answer_pointer(r, "mdl", MmAllocatePagesForMdl(physical(ARG(0)), physical(ARG(1)), physical(ARG(2)), ARG(3)));
}

static void mm_free_pages_from_mdl(const struct request *r)
{
	MmFreePagesFromMdl(PTR(0));
	answer_done(r);
}

static void mm_map_locked_pages_specify_cache(const struct request *r)
{
	if (!argument_at_most(r, "access_mode", ARG(1), UserMode) || !argument_fits_ulong(r, "cache_type", ARG(2)) ||
	    !argument_fits_ulong(r, "bug_check_on_failure", ARG(4)) || !argument_fits_ulong(r, "priority", ARG(5)))
		return;
	PVOID va = MmMapLockedPagesSpecifyCache(PTR(0), (KPROCESSOR_MODE)ARG(1), (MEMORY_CACHING_TYPE)(int32_t)ARG(2),
						PTR(3), (ULONG)ARG(4), (ULONG)ARG(5));
	frame_open_response(r->id);
	frame_hex("va", (uint64_t)va);
	frame_hex("raised", (uint32_t)mdl_raised_status);
	frame_close();
}

static void mm_map_locked_pages(const struct request *r)
{
	if (!argument_at_most(r, "access_mode", ARG(1), UserMode))
		return;
	MmMapLockedPages(PTR(0), (KPROCESSOR_MODE)ARG(1));
}

static void mm_unmap_locked_pages(const struct request *r)
{
	MmUnmapLockedPages(PTR(0), PTR(1));
	answer_done(r);
}

static void mm_get_system_address_for_mdl_safe(const struct request *r)
{
	if (!argument_fits_ulong(r, "priority", ARG(1)))
		return;
	answer_pointer(r, "va", MmGetSystemAddressForMdlSafe(PTR(0), (ULONG)ARG(1)));
}

static void io_build_partial_mdl(const struct request *r)
{
	if (!argument_fits_ulong(r, "length", ARG(3)))
		return;
	IoBuildPartialMdl(PTR(0), PTR(1), PTR(2), (ULONG)ARG(3));
	answer_done(r);
}

static void mm_prepare_mdl_for_reuse(const struct request *r)
{
	MmPrepareMdlForReuse(PTR(0));
	answer_done(r);
}

AGENT_COMMAND("IoAllocateMdl", "iiiii",
	      "<va:integer> <length:integer> <secondary_buffer:integer> <charge_quota:integer> <irp:integer>",
	      io_allocate_mdl);
AGENT_COMMAND("IoFreeMdl", "i", "<mdl:integer>", io_free_mdl);
AGENT_COMMAND("MmInitializeMdl", "iii", "<mdl:integer> <base:integer> <length:integer>", mm_initialize_mdl);
AGENT_COMMAND("MmSizeOfMdl", "ii", "<base:integer> <length:integer>", mm_size_of_mdl);
AGENT_COMMAND("MmGetMdlPfnArray", "i", "<mdl:integer>", mm_get_mdl_pfn_array);
AGENT_COMMAND("MmBuildMdlForNonPagedPool", "i", "<mdl:integer>", mm_build_mdl_for_non_paged_pool);
AGENT_COMMAND("MmProbeAndLockPages", "iii", "<mdl:integer> <access_mode:integer> <operation:integer>",
	      mm_probe_and_lock_pages);
AGENT_COMMAND("MmUnlockPages", "i", "<mdl:integer>", mm_unlock_pages);
AGENT_COMMAND("MmAllocatePagesForMdlEx", "iiiiii",
	      "<low:integer> <high:integer> <skip:integer> <total_bytes:integer> <cache_type:integer> <flags:integer>",
	      mm_allocate_pages_for_mdl_ex);
AGENT_COMMAND("MmAllocatePagesForMdl", "iiii", "<low:integer> <high:integer> <skip:integer> <total_bytes:integer>",
	      mm_allocate_pages_for_mdl);
AGENT_COMMAND("MmFreePagesFromMdl", "i", "<mdl:integer>", mm_free_pages_from_mdl);
AGENT_COMMAND("MmMapLockedPagesSpecifyCache", "iiiiii",
	      "<mdl:integer> <access_mode:integer> <cache_type:integer> <requested_address:integer> "
	      "<bug_check_on_failure:integer> <priority:integer>",
	      mm_map_locked_pages_specify_cache);
AGENT_COMMAND("MmMapLockedPages", "ii", "<mdl:integer> <access_mode:integer>", mm_map_locked_pages);
AGENT_COMMAND("MmUnmapLockedPages", "ii", "<va:integer> <mdl:integer>", mm_unmap_locked_pages);
AGENT_COMMAND("MmGetSystemAddressForMdlSafe", "ii", "<mdl:integer> <priority:integer>",
	      mm_get_system_address_for_mdl_safe);
AGENT_COMMAND("IoBuildPartialMdl", "iiii", "<source:integer> <target:integer> <va:integer> <length:integer>",
	      io_build_partial_mdl);
AGENT_COMMAND("MmPrepareMdlForReuse", "i", "<mdl:integer>", mm_prepare_mdl_for_reuse);
