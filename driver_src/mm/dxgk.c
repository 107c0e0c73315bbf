/*
 * DXGK physical memory objects (ddi-spec §12, include/dxgk.h), built on this kernel's own
 * primitives: MmAllocatePagesForMdlEx for MDL and section memory, contiguous frames straight from
 * the frame allocator (no permanent mapping, unlike MmAllocateContiguousMemory), the system PTEs
 * for kernel views and the user half (include/usermode.h) for user views.
 *
 * Handles are pointers to objects on a list; a handle is looked up on the list before it is
 * touched, so a stale or foreign one is recognised instead of dereferenced.
 */
#include "dxgk.h"
#include "bugcodes.h"
#include "frames.h"
#include "irql.h"
#include "kstring.h"
#include "layout.h"
#include "mdl.h"
#include "pagetable.h"
#include "syspte.h"
#include "usermode.h"

#define DXGK_POOL_TAG 0x6B677844 /* "Dxgk" */
#define DXGK_OBJECT_SIGNATURE 0x6D506744 /* "DgPm" */
#define DXGK_VIEWS_MAX 128
#define DXGK_MAX_IRQL APC_LEVEL /* ddi-spec §12 [DECISION]: PASSIVE and APC accepted */

struct adapter_object {
	HANDLE adapter; /* the adapter it was opened against */
	bool open;
};

struct dxgk_object {
	uint32_t signature;
	struct dxgk_object *next;
	DXGK_PHYSICAL_MEMORY_TYPE type;
	DXGK_MEMORY_CACHING_TYPE cache;
	bool read_only; /* a SECTION created PAGE_READONLY or PAGE_EXECUTE */
	uint64_t size, pages, views;
	struct adapter_object adapter; /* its address is the hAdapterMemoryObject handle */
	PMDL mdl;                      /* MDL and SECTION: the pages */
	pfn_t first;                   /* CONTIGUOUS and IO_SPACE: the first frame */
};

struct view {
	struct dxgk_object *object; /* 0: a free slot */
	uint64_t va, pages;
	bool user;
};

static struct dxgk_object *objects;
static struct view views[DXGK_VIEWS_MAX];

static struct dxgk_object *object_for(HANDLE handle)
{
	for (struct dxgk_object *o = objects; o; o = o->next)
		if (o == handle && o->signature == DXGK_OBJECT_SIGNATURE)
			return o;
	return 0;
}

static struct dxgk_object *object_or_stop(HANDLE handle)
{
	struct dxgk_object *o = object_for(handle);
	if (!o)
		verifier_violation(DXGK_VERIFIER_INVALID_HANDLE, (uint64_t)handle, 0, 0);
	return o;
}

static struct dxgk_object *owner_of_adapter_object(HANDLE handle)
{
	for (struct dxgk_object *o = objects; o; o = o->next)
		if ((HANDLE)&o->adapter == handle && o->adapter.open)
			return o;
	return 0;
}

static pfn_t page_frame(const struct dxgk_object *o, uint64_t index)
{
	return o->mdl ? MmGetMdlPfnArray(o->mdl)[index] : o->first + index;
}

/* MDL and SECTION: all or nothing, as ddi-spec §12.4 [DECISION] asks. */
static bool allocate_mdl(struct dxgk_object *o, uint64_t low, uint64_t high, uint64_t skip, UINT flags)
{
	PHYSICAL_ADDRESS l = {.QuadPart = (LONGLONG)low}, h = {.QuadPart = (LONGLONG)high};
	PHYSICAL_ADDRESS s = {.QuadPart = (LONGLONG)skip};
	o->mdl = MmAllocatePagesForMdlEx(l, h, s, o->size, (MEMORY_CACHING_TYPE)o->cache,
					 flags | MM_ALLOCATE_FULLY_REQUIRED);
	return o->mdl != NULL;
}

static void free_pages(struct dxgk_object *o)
{
	if (o->mdl) {
		MmFreePagesFromMdl(o->mdl);
		IoFreeMdl(o->mdl);
	} else if (o->type == DXGK_PHYSICAL_MEMORY_TYPE_CONTIGUOUS_MEMORY) {
		for (uint64_t i = 0; i < o->pages; i++)
			frame_free(o->first + i, PFN_CONTIGUOUS);
	}
}

static bool section_protection_valid(ULONG protection)
{
	return protection == PAGE_READONLY || protection == PAGE_READWRITE ||
	       protection == PAGE_WRITECOPY || protection == PAGE_EXECUTE;
}

/* Frames an IO_SPACE object may name: below the CPU's largest physical address (52 bits). */
#define IO_SPACE_PFN_LIMIT BIT(52 - PAGE_SHIFT)

static NTSTATUS check_create(const DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT *a)
{
	if (a->Size == 0 || a->Size > UINT64_MAX - PAGE_OFFSET_MASK)
		return STATUS_INVALID_PARAMETER;
	if ((uint64_t)a->Type > DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE ||
	    (uint64_t)a->CacheType > DXGK_MEMORY_CACHING_TYPE_WRITE_COMBINED)
		return STATUS_INVALID_PARAMETER;
	if (a->Type == DXGK_PHYSICAL_MEMORY_TYPE_SECTION &&
	    (a->CacheType == DXGK_MEMORY_CACHING_TYPE_NON_CACHED || !section_protection_valid(a->Section.PageProtection)))
		return STATUS_INVALID_PARAMETER;
	if (a->Type == DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE) {
		uint64_t base = (uint64_t)a->IOSpace.BaseAddress.QuadPart;
		uint64_t pages = (a->Size + PAGE_OFFSET_MASK) >> PAGE_SHIFT;
		if (base & PAGE_OFFSET_MASK || base >> PAGE_SHIFT >= IO_SPACE_PFN_LIMIT ||
		    pages > IO_SPACE_PFN_LIMIT - (base >> PAGE_SHIFT))
			return STATUS_INVALID_PARAMETER;
	}
	return STATUS_SUCCESS;
}

NTSTATUS DxgkCbCreatePhysicalMemoryObject(DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	NTSTATUS status = check_create(a);
	if (status != STATUS_SUCCESS)
		return status;
	uint64_t pages = (a->Size + PAGE_OFFSET_MASK) >> PAGE_SHIFT;
	bool io = a->Type == DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE;
	if (!io && pages > frame_stats().free)
		return STATUS_INSUFFICIENT_RESOURCES;
	struct dxgk_object *o = ExAllocatePoolWithTag(NonPagedPoolNx, sizeof(*o), DXGK_POOL_TAG);
	if (!o)
		return STATUS_INSUFFICIENT_RESOURCES;
	*o = (struct dxgk_object){
		.type = a->Type,
		.cache = a->CacheType,
		.size = a->Size,
		.pages = pages,
		.read_only = a->Type == DXGK_PHYSICAL_MEMORY_TYPE_SECTION &&
			     (a->Section.PageProtection == PAGE_READONLY ||
			      a->Section.PageProtection == PAGE_EXECUTE),
	};
	bool allocated = true;
	switch (a->Type) {
	case DXGK_PHYSICAL_MEMORY_TYPE_MDL:
		allocated = allocate_mdl(o, (uint64_t)a->Mdl.LowAddress.QuadPart, (uint64_t)a->Mdl.HighAddress.QuadPart,
					 (uint64_t)a->Mdl.SkipBytes.QuadPart, a->Mdl.Flags);
		break;
	case DXGK_PHYSICAL_MEMORY_TYPE_SECTION: /* no sections here: pagefile-backed = any RAM page */
		allocated = allocate_mdl(o, 0, INT64_MAX, 0, 0);
		break;
	case DXGK_PHYSICAL_MEMORY_TYPE_CONTIGUOUS_MEMORY:
		o->first = frames_alloc_contiguous(
			pages, (uint64_t)a->ContiguousMemory.LowestAcceptableAddress.QuadPart >> PAGE_SHIFT,
			(uint64_t)a->ContiguousMemory.HighestAcceptableAddress.QuadPart >> PAGE_SHIFT,
			(uint64_t)a->ContiguousMemory.BoundaryAddressMultiple.QuadPart >> PAGE_SHIFT, PFN_CONTIGUOUS);
		allocated = o->first != PFN_NONE;
		if (allocated) /* MmAllocatePagesForMdlEx zeroes its pages; these never show a previous owner's data either */
			for (uint64_t i = 0; i < pages; i++)
				memset(phys_to_virt((o->first + i) << PAGE_SHIFT), 0, PAGE_SIZE);
		break;
	case DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE:
		o->first = (uint64_t)a->IOSpace.BaseAddress.QuadPart >> PAGE_SHIFT;
		break;
	}
	if (!allocated) {
		ExFreePoolWithTag(o, DXGK_POOL_TAG);
		return STATUS_INSUFFICIENT_RESOURCES;
	}
	o->signature = DXGK_OBJECT_SIGNATURE;
	o->adapter = (struct adapter_object){.adapter = a->hAdapter, .open = a->hAdapter != 0};
	o->next = objects;
	objects = o;
	a->hPhysicalMemoryObject = o;
	a->hAdapterMemoryObject = a->hAdapter ? (HANDLE)&o->adapter : 0;
	return STATUS_SUCCESS;
}

/* ddi-spec §2.5: NonCached = PCD|PWT (PAT entry 3, UC), WriteCombined = PWT (entry 1), Cached = WB. */
static uint64_t cache_bits(DXGK_MEMORY_CACHING_TYPE cache)
{
	switch (cache) {
	case DXGK_MEMORY_CACHING_TYPE_NON_CACHED: return PTE_PCD | PTE_PWT;
	case DXGK_MEMORY_CACHING_TYPE_WRITE_COMBINED: return PTE_PWT;
	default: return 0;
	}
}

static struct view *free_view_slot(void)
{
	for (unsigned i = 0; i < DXGK_VIEWS_MAX; i++)
		if (!views[i].object)
			return &views[i];
	return 0;
}

NTSTATUS DxgkCbMapPhysicalMemory(DXGKARGCB_MAP_PHYSICAL_MEMORY *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	struct dxgk_object *o = object_for(a->hPhysicalMemoryObject);
	if (!o)
		return STATUS_INVALID_HANDLE;
	bool user = a->AccessMode == DXGK_ACCESS_MODE_USER_MODE;
	if ((uint64_t)a->AccessMode > DXGK_ACCESS_MODE_USER_MODE || (user && o->type == DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE))
		return STATUS_INVALID_PARAMETER;
	if (a->Size == 0 || a->Offset > o->size || a->Size > o->size - a->Offset)
		return STATUS_INVALID_PARAMETER;
	uint64_t first = a->Offset >> PAGE_SHIFT, last = (a->Offset + a->Size - 1) >> PAGE_SHIFT;
	uint64_t pages = last - first + 1;
	struct view *slot = free_view_slot();
	uint64_t va = !slot ? 0 : user ? user_view_reserve(pages) : syspte_reserve(pages);
	if (!va)
		return STATUS_INSUFFICIENT_RESOURCES;
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t pa = page_frame(o, first + i) << PAGE_SHIFT;
		uint64_t leaf = user ? pte_user_leaf(pa, !o->read_only)
				     : pte_kernel_leaf(pa, 1, o->read_only ? PROT_READ : PROT_READ_WRITE);
		leaf |= cache_bits(o->cache);
		if (user)
			user_map_page(va + i * PAGE_SIZE, leaf);
		else
			tlb_flush(pt_set(&live, va + i * PAGE_SIZE, 1, leaf));
	}
	*slot = (struct view){.object = o, .va = va, .pages = pages, .user = user};
	o->views++;
	a->pMappedAddress = (PVOID)va;
	a->Offset &= PAGE_OFFSET_MASK;
	a->Size = pages << PAGE_SHIFT;
	return STATUS_SUCCESS;
}

void DxgkCbUnmapPhysicalMemory(const DXGKARGCB_UNMAP_PHYSICAL_MEMORY *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	struct dxgk_object *o = object_or_stop(a->hPhysicalMemoryObject);
	uint64_t va = (uint64_t)a->pBaseAddress;
	struct view *v = 0;
	for (unsigned i = 0; i < DXGK_VIEWS_MAX && !v; i++)
		if (views[i].object == o && views[i].va == va && views[i].pages << PAGE_SHIFT == a->Size)
			v = &views[i];
	if (!v)
		KeBugCheckEx(SYSTEM_PTE_MISUSE, DXGK_UNMAP_NOT_MAPPED, va, a->Size >> PAGE_SHIFT, 0);
	struct pt_view live = pt_live();
	for (uint64_t i = 0; i < v->pages; i++) {
		uint64_t page = va + i * PAGE_SIZE, old;
		if (v->user)
			user_unmap_page(page);
		else
			tlb_flush(pt_clear(&live, page, &old));
	}
	if (v->user)
		user_view_release(va, v->pages);
	else
		syspte_release(va, v->pages);
	*v = (struct view){0};
	o->views--;
}

void DxgkCbDestroyPhysicalMemoryObject(const DXGKARGCB_DESTROY_PHYSICAL_MEMORY_OBJECT *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	struct dxgk_object *o = object_or_stop(a->hPhysicalMemoryObject);
	if (a->hAdapterMemoryObject && owner_of_adapter_object(a->hAdapterMemoryObject) != o)
		verifier_violation(DXGK_VERIFIER_INVALID_HANDLE, (uint64_t)a->hAdapterMemoryObject, 0, 0);
	if (o->views) /* no ADLs exist in this kernel: P3 is always 0 */
		verifier_violation(DXGK_VERIFIER_LIVE_MAPPINGS, (uint64_t)o, 0, o->views);
	struct dxgk_object **link = &objects;
	while (*link != o)
		link = &(*link)->next;
	*link = o->next;
	free_pages(o);
	o->signature = 0;
	ExFreePoolWithTag(o, DXGK_POOL_TAG);
}

NTSTATUS DxgkCbOpenPhysicalMemoryObject(DXGKARGCB_OPEN_PHYSICAL_MEMORY_OBJECT *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	struct dxgk_object *o = object_for(a->hPhysicalMemoryObject);
	if (!o)
		return STATUS_INVALID_HANDLE;
	if (!a->hAdapter || o->adapter.open) /* one adapter association per object */
		return STATUS_INVALID_PARAMETER;
	o->adapter = (struct adapter_object){.adapter = a->hAdapter, .open = true};
	a->hAdapterMemoryObject = (HANDLE)&o->adapter;
	return STATUS_SUCCESS;
}

void DxgkCbClosePhysicalMemoryObject(const DXGKARGCB_CLOSE_PHYSICAL_MEMORY_OBJECT *a)
{
	verifier_require_irql_at_most(DXGK_MAX_IRQL);
	struct dxgk_object *o = owner_of_adapter_object(a->hAdapterMemoryObject);
	if (!o)
		verifier_violation(DXGK_VERIFIER_INVALID_HANDLE, (uint64_t)a->hAdapterMemoryObject, 0, 0);
	o->adapter.open = false;
}

bool dxgk_object_query(HANDLE handle, struct dxgk_object_info *info)
{
	struct dxgk_object *o = object_for(handle);
	if (!o)
		return false;
	*info = (struct dxgk_object_info){o->type, o->cache, o->size, o->pages, o->views};
	return true;
}

uint64_t dxgk_object_pfn(HANDLE handle, uint64_t index)
{
	return page_frame(object_for(handle), index);
}

uint64_t dxgk_live_objects(void)
{
	uint64_t n = 0;
	for (struct dxgk_object *o = objects; o; o = o->next)
		n++;
	return n;
}

uint64_t dxgk_live_views(void)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < DXGK_VIEWS_MAX; i++)
		n += views[i].object != 0;
	return n;
}
