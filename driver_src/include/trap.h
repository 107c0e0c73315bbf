/* GDT, TSS with IST stacks, IDT; every CPU exception becomes a structured bugcheck, every other
 * vector goes to interrupt_dispatch(). */
#pragma once
#include <stdint.h>
#include "compiler.h"

/* Built by boot/traps.S: general registers (r15 pushed last), then vector, error code, CPU frame. */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* On the BSP: the IDT, and the BSP's GDT and TSS. */
void trap_init(void);
/* On an AP: its own GDT and TSS (IST and ring-0 stacks in its stack slot, layout.h), the shared IDT. */
void trap_init_ap(unsigned cpu);
/* Called by boot/traps.S for vectors 0-31: returns only after resuming an expected fault at its
 * fixup; any other exception becomes a bugcheck. */
void trap_handle(struct trap_frame *frame);
/* Called by boot/traps.S for vectors FIRST_INTERRUPT_VECTOR and up; returns to the interrupted code. */
void interrupt_dispatch(uint64_t vector);
