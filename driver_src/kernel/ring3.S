/*
 * Ring-3 transitions (include/usermode.h). ring3_enter() drops to ring 3 with IRETQ; every way back
 * is an exception taken in ring 3 (the probe's final UD2, or a fault on its access), which
 * trap_handle() hands to usermode_fault(), and ring3_abandon() restores the kernel context that
 * ring3_enter() saved and returns from it.
 */
#include "x86.h"
#include "usermode.h"

/* The probe runs from a user alias of this page, so the page holds nothing else. */
	.section .text.ring3_probe, "ax"
	.balign 4096
	.globl ring3_probe_page
ring3_probe_page:
	/* rdi: the user VA, rsi: USER_PROBE_READ or USER_PROBE_WRITE, rdx: the value to write */
	cmp $USER_PROBE_WRITE, %rsi
	je 1f
	mov (%rdi), %rax
	jmp ring3_probe_done
1:	mov %rdx, (%rdi)
	xor %eax, %eax
	.globl ring3_probe_done
ring3_probe_done: /* rax: the result */
	ud2
	.balign 4096, 0xCC

	.text
/* void ring3_enter(uint64_t rip, uint64_t rsp, uint64_t rdi, uint64_t rsi, uint64_t rdx): returns
 * when ring3_abandon() is called. */
	.globl ring3_enter
	.type ring3_enter, @function
ring3_enter:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, ring3_kernel_rsp(%rip)
	pushq $(GDT_USER_DATA | 3)
	push %rsi
	pushq $0x2 /* RFLAGS: interrupts stay off in ring 3 */
	pushq $(GDT_USER_CODE | 3)
	push %rdi
	mov %rdx, %rdi
	mov %rcx, %rsi
	mov %r8, %rdx
	/* ring 3 sees no kernel values */
	xor %eax, %eax
	xor %ebx, %ebx
	xor %ecx, %ecx
	xor %ebp, %ebp
	xor %r8d, %r8d
	xor %r9d, %r9d
	xor %r10d, %r10d
	xor %r11d, %r11d
	xor %r12d, %r12d
	xor %r13d, %r13d
	xor %r14d, %r14d
	xor %r15d, %r15d
	mov $(GDT_USER_DATA | 3), %r8d
	mov %r8d, %ds
	mov %r8d, %es
	xor %r8d, %r8d
	iretq
	.size ring3_enter, . - ring3_enter

/* NORETURN void ring3_abandon(void): from usermode_fault(), on the ring-0 stack of the exception. */
	.globl ring3_abandon
	.type ring3_abandon, @function
ring3_abandon:
	cld
	mov $GDT_KERNEL_DATA, %ecx
	mov %ecx, %ds
	mov %ecx, %es
	mov %ecx, %ss
	mov ring3_kernel_rsp(%rip), %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret
	.size ring3_abandon, . - ring3_abandon

	.bss
	.balign 8
ring3_kernel_rsp:
	.quad 0
