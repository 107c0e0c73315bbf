/*
 * Entry stubs for all 256 vectors. Exceptions (0-31) build a struct trap_frame (include/trap.h) and
 * call trap_handle(), which returns only when the fault was expected (a fixup, include/nofault.h)
 * and has rewritten the frame; everything else stops the kernel there. Interrupts (32-255) call
 * interrupt_dispatch() and return to the interrupted code.
 */
#include "x86.h"

#define INTERRUPT_STUB_SIZE 16 /* interrupt stubs sit this far apart: the table below is computed */

	.text

.macro TRAP vector, has_error_code
	.balign 16
trap_\vector:
	.if \has_error_code == 0
	push $0
	.endif
	push $\vector
	jmp trap_common
.endm

/* Vectors whose exception pushes an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX. */
.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	TRAP \v, 0
.endr
.irp v, 8,10,11,12,13,14,17,21,29,30
	TRAP \v, 1
.endr

trap_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, %rdi
	mov %rsp, %rbx /* callee-saved: the frame, for the way back */
	and $-16, %rsp
	cld
	call trap_handle
	mov %rbx, %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rbp
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rbx
	pop %rax
	add $16, %rsp /* vector and error code */
	iretq

/* .org pads each stub to INTERRUPT_STUB_SIZE, and refuses to assemble one that outgrew it. */
	.balign INTERRUPT_STUB_SIZE
interrupt_stubs:
	.set vector, FIRST_INTERRUPT_VECTOR
	.rept IDT_VECTORS - FIRST_INTERRUPT_VECTOR
1:	push $vector
	jmp interrupt_common
	.org 1b + INTERRUPT_STUB_SIZE, 0xCC
	.set vector, vector + 1
	.endr

/* Saves what the C ABI lets interrupt_dispatch() clobber, and rbx, which keeps the unaligned rsp. */
interrupt_common:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	push %rbx
	mov 80(%rsp), %rdi /* the vector */
	mov %rsp, %rbx
	and $-16, %rsp
	cld
	call interrupt_dispatch
	mov %rbx, %rsp
	pop %rbx
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	add $8, %rsp /* the vector */
	iretq

	.section .rodata
	.balign 8
	.globl trap_entry_points
trap_entry_points:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad trap_\v
.endr

	.globl interrupt_entry_points
interrupt_entry_points:
	.set vector, 0
	.rept IDT_VECTORS - FIRST_INTERRUPT_VECTOR
	.quad interrupt_stubs + vector * INTERRUPT_STUB_SIZE
	.set vector, vector + 1
	.endr
