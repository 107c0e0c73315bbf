/*
 * DXGK physical-memory-object callbacks (ddi-spec §12, d3dkmddi.h): Create, Map, Unmap, Destroy,
 * Open and Close, with the DXGKARGCB_* argument structures of §12.3.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "mdl.h"
#include "ntddk.h"

typedef void *HANDLE;
typedef uint32_t UINT;
typedef ULONG ACCESS_MASK;
typedef void *POBJECT_ATTRIBUTES;

/* DRIVER_VERIFIER_DETECTED_VIOLATION subcodes of this test kernel only (ddi-spec §12.4 [DECISION]). */
#define DXGK_VERIFIER_INVALID_HANDLE 0x1000 /* P2 the handle */
#define DXGK_VERIFIER_LIVE_MAPPINGS 0x1001  /* P2 the object, P3 live ADLs, P4 live CPU views */
/* SYSTEM_PTE_MISUSE for an Unmap that names no live view (P2 base, P3 Size >> 12). */
#define DXGK_UNMAP_NOT_MAPPED 0x303

typedef enum {
	DXGK_PHYSICAL_MEMORY_TYPE_MDL,
	DXGK_PHYSICAL_MEMORY_TYPE_CONTIGUOUS_MEMORY,
	DXGK_PHYSICAL_MEMORY_TYPE_SECTION,
	DXGK_PHYSICAL_MEMORY_TYPE_IO_SPACE,
} DXGK_PHYSICAL_MEMORY_TYPE;

typedef enum {
	DXGK_ACCESS_MODE_KERNEL_MODE,
	DXGK_ACCESS_MODE_USER_MODE,
} DXGK_ACCESS_MODE;

typedef enum {
	DXGK_MEMORY_CACHING_TYPE_NON_CACHED,
	DXGK_MEMORY_CACHING_TYPE_CACHED,
	DXGK_MEMORY_CACHING_TYPE_WRITE_COMBINED,
} DXGK_MEMORY_CACHING_TYPE;

typedef struct _DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT {
	HANDLE hAdapter;
	SIZE_T Size;
	ULONG_PTR Context;
	DXGK_PHYSICAL_MEMORY_TYPE Type;
	DXGK_MEMORY_CACHING_TYPE CacheType;
	union {
		struct {
			PHYSICAL_ADDRESS LowAddress, HighAddress, SkipBytes;
			UINT Flags;
		} Mdl;
		struct {
			PHYSICAL_ADDRESS LowestAcceptableAddress, HighestAcceptableAddress, BoundaryAddressMultiple;
		} ContiguousMemory;
		struct {
			ACCESS_MASK DesiredAccess;
			POBJECT_ATTRIBUTES ObjectAttributes;
			ULONG PageProtection;
			ULONG AllocationAttributes;
		} Section;
		struct {
			PHYSICAL_ADDRESS BaseAddress;
		} IOSpace;
	};
	HANDLE hPhysicalMemoryObject;
	HANDLE hAdapterMemoryObject;
} DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT;

typedef struct _DXGKARGCB_MAP_PHYSICAL_MEMORY {
	HANDLE hPhysicalMemoryObject;
	DXGK_ACCESS_MODE AccessMode;
	SIZE_T Offset;
	SIZE_T Size;
	PVOID pMappedAddress;
} DXGKARGCB_MAP_PHYSICAL_MEMORY;

typedef struct _DXGKARGCB_UNMAP_PHYSICAL_MEMORY {
	HANDLE hPhysicalMemoryObject;
	PVOID pBaseAddress;
	SIZE_T Size;
} DXGKARGCB_UNMAP_PHYSICAL_MEMORY;

typedef struct _DXGKARGCB_DESTROY_PHYSICAL_MEMORY_OBJECT {
	HANDLE hPhysicalMemoryObject;
	HANDLE hAdapterMemoryObject;
} DXGKARGCB_DESTROY_PHYSICAL_MEMORY_OBJECT;

typedef struct _DXGKARGCB_OPEN_PHYSICAL_MEMORY_OBJECT {
	HANDLE hPhysicalMemoryObject;
	HANDLE hAdapter;
	HANDLE hAdapterMemoryObject;
} DXGKARGCB_OPEN_PHYSICAL_MEMORY_OBJECT;

typedef struct _DXGKARGCB_CLOSE_PHYSICAL_MEMORY_OBJECT {
	HANDLE hAdapterMemoryObject;
} DXGKARGCB_CLOSE_PHYSICAL_MEMORY_OBJECT;

NTSTATUS DxgkCbCreatePhysicalMemoryObject(DXGKARGCB_CREATE_PHYSICAL_MEMORY_OBJECT *pArgs);
void DxgkCbDestroyPhysicalMemoryObject(const DXGKARGCB_DESTROY_PHYSICAL_MEMORY_OBJECT *pArgs);
NTSTATUS DxgkCbMapPhysicalMemory(DXGKARGCB_MAP_PHYSICAL_MEMORY *pArgs);
void DxgkCbUnmapPhysicalMemory(const DXGKARGCB_UNMAP_PHYSICAL_MEMORY *pArgs);
NTSTATUS DxgkCbOpenPhysicalMemoryObject(DXGKARGCB_OPEN_PHYSICAL_MEMORY_OBJECT *pArgs);
void DxgkCbClosePhysicalMemoryObject(const DXGKARGCB_CLOSE_PHYSICAL_MEMORY_OBJECT *pArgs);

/* For the agent and the leak count: what an object is made of, and how much is outstanding. */
struct dxgk_object_info {
	DXGK_PHYSICAL_MEMORY_TYPE type;
	DXGK_MEMORY_CACHING_TYPE cache;
	uint64_t size, pages, views;
};
/* False for a handle that names no live object. */
bool dxgk_object_query(HANDLE object, struct dxgk_object_info *info);
/* The object's page index'th frame (index below info.pages). */
uint64_t dxgk_object_pfn(HANDLE object, uint64_t index);
uint64_t dxgk_live_objects(void);
uint64_t dxgk_live_views(void);
