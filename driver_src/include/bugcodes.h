/* NT bugcheck codes and exception statuses this kernel raises (ddi-spec §13, §1.5). */
#pragma once
#include <stdint.h>

#define IRQL_NOT_GREATER_OR_EQUAL 0x09
#define IRQL_NOT_LESS_OR_EQUAL 0x0A
#define MEMORY_MANAGEMENT 0x1A
#define KMODE_EXCEPTION_NOT_HANDLED 0x1E
#define PHASE0_INITIALIZATION_FAILED 0x31
#define NO_MORE_SYSTEM_PTES 0x3F
#define TARGET_MDL_TOO_SMALL 0x40
#define NO_PAGES_AVAILABLE 0x4D
#define PFN_LIST_CORRUPT 0x4E
#define PAGE_FAULT_IN_NONPAGED_AREA 0x50
#define UNSUPPORTED_PROCESSOR 0x5D
#define INSTALL_MORE_MEMORY 0x7D
#define UNEXPECTED_KERNEL_MODE_TRAP 0x7F
#define NMI_HARDWARE_FAILURE 0x80
#define PROCESS_HAS_LOCKED_PAGES 0x76
#define MACHINE_CHECK_EXCEPTION 0x9C
#define ATTEMPTED_WRITE_TO_READONLY_MEMORY 0xBE
#define BAD_POOL_CALLER 0xC2
#define DRIVER_VERIFIER_DETECTED_VIOLATION 0xC4
#define DRIVER_IRQL_NOT_LESS_OR_EQUAL 0xD1
#define SYSTEM_PTE_MISUSE 0xDA
#define ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY 0xFC
#define INVALID_MDL_RANGE 0x12E

/* Family-specific subcodes live with their family's header (mdl.h, syspte.h, ...); the ones
 * shared by several families are here. */

/* MEMORY_MANAGEMENT P1: a PTE does not hold what the memory manager expects (P2 its address, P3 its value). */
#define MM_CORRUPTED_PTE 0x41792

/* MEMORY_MANAGEMENT P1: locking a frame that is free or not RAM (P2 PFN, P3 its state). */
#define MM_LOCK_UNUSABLE_PAGE 0x1233

/* PFN_LIST_CORRUPT P1: a frame is not in the state a transition requires (P2 PFN, P3 state, P4 expected). */
#define PFN_CORRUPT_STATE 0x99
/* PFN_LIST_CORRUPT P1: a page unlocked more often than locked (P2 PFN, P3 lock count = 0). */
#define PFN_UNLOCKED_TOO_OFTEN 0x07
/* PFN_LIST_CORRUPT P1: freeing a frame still locked for I/O (P2 PFN, P3 state, P4 lock count). */
#define PFN_FREED_WHILE_LOCKED 0x9A

/* DRIVER_VERIFIER_DETECTED_VIOLATION P1: a kernel API called at an IRQL it does not allow
 * (P2 the current IRQL). The verifier is always on in this kernel [DECISION]. */
#define VERIFIER_API_WRONG_IRQL 0xE5

/* PHASE0_INITIALIZATION_FAILED P1 (mmhil's own): what the boot hand-off lacked. */
#define BOOT_BAD_START_INFO 1 /* P2 = magic found */
#define BOOT_NO_MEMORY_MAP 2  /* P2 = start_info version, P3 = memmap_paddr, P4 = entries */
#define BOOT_OUT_OF_REACH 3   /* P2 = physical address outside the boot stub's 1 GiB map */
#define BOOT_LIMIT 4          /* P2 = what overflowed a fixed boot table, P3 = its capacity */

/* PAGE_FAULT_IN_NONPAGED_AREA P4 ([DECISION] ddi-spec §13). */
#define PF_TYPE_FREED_PTE 0x0
#define PF_TYPE_TABLE_NOT_PRESENT 0x2
#define PF_TYPE_NON_CANONICAL 0x4
#define PF_TYPE_ACCESS_INCONSISTENT 0xF

/* BAD_POOL_CALLER P1 (ddi-spec §11). */
#define POOL_HEADER_CORRUPT 0x01
#define POOL_DOUBLE_FREE 0x07
#define POOL_WRONG_TAG 0x0A
#define POOL_NEVER_ALLOCATED 0x42
#define POOL_INVALID_ADDRESS 0x46

/* NTSTATUS exception codes that KMODE_EXCEPTION_NOT_HANDLED reports. */
#define STATUS_BREAKPOINT 0x80000003
#define STATUS_SINGLE_STEP 0x80000004
#define STATUS_ACCESS_VIOLATION 0xC0000005
#define STATUS_ILLEGAL_INSTRUCTION 0xC000001D
#define STATUS_ARRAY_BOUNDS_EXCEEDED 0xC000008C
#define STATUS_FLOAT_MULTIPLE_FAULTS 0xC00002B4
#define STATUS_INTEGER_DIVIDE_BY_ZERO 0xC0000094
#define STATUS_INTEGER_OVERFLOW 0xC0000095
#define STATUS_DATATYPE_MISALIGNMENT 0x80000002
#define STATUS_FLOAT_MULTIPLE_TRAPS 0xC00002B5

const char *bugcheck_name(uint32_t code);
