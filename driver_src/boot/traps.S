/*
 * Exception entry stubs for vectors 0-31. Every exception stops the kernel, so the stubs only
 * build a struct trap_frame (kernel/trap.h) and call trap_bugcheck(); nothing returns.
 */
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
	and $-16, %rsp
	call trap_bugcheck
	ud2

	.section .rodata
	.balign 8
	.globl trap_entry_points
trap_entry_points:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad trap_\v
.endr
