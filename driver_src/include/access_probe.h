/*
 * The page-permission probe (docs/access-matrix.md): a batch of cases, each its own chain of
 * paging-structure entries under its own top-level slot of a private address space, each
 * accessed once (read, write or fetch, at CPL 0 or 3, under its own CR0.WP, CR4.SMEP/SMAP,
 * RFLAGS.AC and EFER.NXE), with the outcome recorded. The host predicts every outcome and reads
 * every entry's A and D bits back from guest RAM.
 *
 * Why a private address space: with EFER.NXE=0 an XD bit anywhere on the path of the code, stack,
 * GDT, IDT, TSS or handlers is a reserved bit, and the kernel's own tables set XD on all its data.
 * The probe space maps only what a batch touches, without XD; it is loaded only for the batch, with
 * interrupts off, behind a private IDT whose handlers record the fault and move on to the next case.
 *
 * Shared by access_probe.c and access_probe_loop.S: record layouts (offsets checked in C), case encoding.
 */
#pragma once
#include "const.h"

#define ACCESS_BATCH_MAX 512 /* cases per batch: at most one per top-level slot */

/* Case encoding on the wire (bytes value of access_probe_batch). Byte 0: the controls. */
#define ACCESS_CONTROL_OP_MASK 0x03 /* ACCESS_OP_* */
#define ACCESS_CONTROL_CPL3 BIT(2)
#define ACCESS_CONTROL_WP BIT(3)
#define ACCESS_CONTROL_SMEP BIT(4)
#define ACCESS_CONTROL_SMAP BIT(5)
#define ACCESS_CONTROL_AC BIT(6)
#define ACCESS_CONTROL_NXE BIT(7)
/* Byte 1: how many entries follow (1..levels), from the top level down; each a little-endian u16:
 * bits 0-8 are the entry's own bits 0-8 (only P, R/W, U/S, A, D and PS may be set), then: */
#define ACCESS_SPEC_ENTRY_BITS 0x0E7 /* P RW US A D PS */
#define ACCESS_SPEC_XD BIT(9)             /* bit 63 */
#define ACCESS_SPEC_RESERVED_PHYS BIT(10) /* the bit at MAXPHYADDR */
#define ACCESS_SPEC_RESERVED_LARGE BIT(11) /* bit 13 */
#define ACCESS_SPEC_VALID \
	(ACCESS_SPEC_ENTRY_BITS | ACCESS_SPEC_XD | ACCESS_SPEC_RESERVED_PHYS | ACCESS_SPEC_RESERVED_LARGE)
#define ACCESS_LARGE_RESERVED_BIT 13

#define ACCESS_OP_READ 0
#define ACCESS_OP_WRITE 1
#define ACCESS_OP_FETCH 2

/* Where in its target page each access goes: fetches run the code page's RET at offset 0, reads
 * load the data page's signature, writes store into a scratch qword of the data page. */
#define ACCESS_FETCH_OFFSET 0x000
#define ACCESS_READ_OFFSET 0x100
#define ACCESS_WRITE_OFFSET 0x200
#define ACCESS_SIGNATURE U64_C(0x5AC3A5F00FA55A3C)

#define ACCESS_NO_VECTOR U64_C(0xFF) /* the access completed */
#define ACCESS_RESULT_BYTES 28       /* per case on the wire: vector u8, ring u8, error u16, cr2, rip, value */

/* struct access_run: one case as the batch loop runs it. */
#define ACCESS_RUN_VA 0x00
#define ACCESS_RUN_OP 0x08
#define ACCESS_RUN_CPL 0x10
#define ACCESS_RUN_RFLAGS 0x18
#define ACCESS_RUN_CR0 0x20
#define ACCESS_RUN_CR4 0x28
#define ACCESS_RUN_EFER 0x30
#define ACCESS_RUN_VALUE 0x38 /* what a write stores */
#define ACCESS_RUN_SIZE 0x40

/* struct access_result: what the exception handler (or the completed access) left. */
#define ACCESS_RESULT_VECTOR 0x00
#define ACCESS_RESULT_ERROR 0x08
#define ACCESS_RESULT_CR2 0x10
#define ACCESS_RESULT_RIP 0x18
#define ACCESS_RESULT_CS 0x20
#define ACCESS_RESULT_VALUE 0x28 /* rax: the qword a read loaded */
#define ACCESS_RESULT_SIZE 0x30

/* struct access_probe_space, after its two page-sized stacks. */
#define ACCESS_STACK_SIZE 0x2000
#define ACCESS_SPACE_STATE (ACCESS_STACK_SIZE + 0x1000) /* after the ring-0 stack and the user stack page */
#define ACCESS_STATE_COUNT 0x00
#define ACCESS_STATE_INDEX 0x08
#define ACCESS_STATE_IN_CASE 0x10
#define ACCESS_STATE_CURRENT 0x18 /* the result being filled */
#define ACCESS_STATE_RUNS 0x20
#define ACCESS_STATE_LOOP_RSP 0x28
#define ACCESS_STATE_PROBE_CR3 0x30
#define ACCESS_STATE_PROBE_CR4 0x38 /* the kernel's CR4 without PGE: loading it drops global TLB entries */
#define ACCESS_STATE_USER_RIP 0x40
#define ACCESS_STATE_USER_RSP 0x48
#define ACCESS_STATE_KERNEL_RSP 0x50
#define ACCESS_STATE_KERNEL_CR0 0x58
#define ACCESS_STATE_KERNEL_CR3 0x60
#define ACCESS_STATE_KERNEL_CR4 0x68
#define ACCESS_STATE_KERNEL_EFER 0x70
#define ACCESS_STATE_CURRENT_CR0 0x78
#define ACCESS_STATE_CURRENT_CR4 0x80
#define ACCESS_STATE_CURRENT_EFER 0x88
#define ACCESS_STATE_KERNEL_IDTR 0x90 /* 10 bytes, then padding */
#define ACCESS_STATE_PROBE_IDTR 0xA0  /* 10 bytes, then padding */
#define ACCESS_STATE_RESULTS 0xB0
#define ACCESS_STATE_SIZE 0xB8

#ifndef __ASSEMBLER__
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the host needs to find every case's entries in guest RAM and to check what it reads. */
struct access_probe_info {
	uint64_t root_pa;        /* the probe space's top-level table: case i's top entry is slot[i] there */
	/* case i's table for level k (k < levels) is at tables_pa + (i * (levels - 1) + levels - 1 - k) pages */
	uint64_t tables_pa;
	uint64_t code_pa, data_pa; /* the target pages */
	unsigned slot_count;
	const uint16_t *slots;   /* the top-level slots cases use, in order */
	unsigned maxphyaddr;
	uint64_t ring0_read_rip, ring0_write_rip, ring3_read_rip, ring3_write_rip; /* the access instructions */
	uint64_t frames;         /* frames the probe holds (its tables and target pages) */
};

/* Why a setup or a batch was refused: what, the case it concerns (-1: none) and a value it names. */
struct access_probe_refusal {
	const char *what;
	int case_index;
	uint64_t value;
};

/* Builds the probe space (idempotent); false when frames run out. */
bool access_probe_setup(struct access_probe_info *info, struct access_probe_refusal *refusal);
/* Frees every frame of the probe space (nothing to do when it is not set up). */
void access_probe_release(void);
uint64_t access_probe_frames(void);
/* Decodes, builds and runs a batch; out receives ACCESS_RESULT_BYTES per case, *count the cases.
 * False when the batch cannot be run; nothing has been run or changed then. */
bool access_probe_run(const uint8_t *cases, size_t length, uint8_t *out, unsigned *count,
		      struct access_probe_refusal *refusal);
#endif
