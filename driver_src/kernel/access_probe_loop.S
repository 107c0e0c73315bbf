/*
 * The access probe's batch loop and exception handlers (include/access_probe.h). Everything here
 * runs with the probe space loaded, so it lives in pages of its own, which that space maps; the
 * ring-3 part has a page of its own too, which the probe space maps as a user page.
 *
 * For each case the loop sets CR0, CR4 and EFER (only when they change), then performs the access:
 * in ring 0 directly, in ring 3 through IRETQ to the user page. Every exception lands in
 * probe_trap_common through the probe's own IDT: it records the vector, error code, CR2, RIP, CS and
 * RAX in the case's result and resumes the loop at the next case on the loop's own stack. Ring 3
 * comes back the same way: its last instruction is UD2 at access_probe_user_done.
 */
#include "x86.h"
#include "access_probe.h"

#define RFLAGS_RESERVED 0x2       /* bit 1: always 1; IF stays 0 */
#define RFLAGS_AC BIT(18)
#define TRAP_VECTORS 32

.macro LOAD_SPACE reg
	lea access_probe_space(%rip), \reg
.endm

	.section .text.access_probe, "ax"
	.balign 4096
	.globl access_probe_text_start
access_probe_text_start:

/* void access_probe_execute(void): runs state.count cases of access_probe_space.state.runs. */
	.globl access_probe_execute
	.type access_probe_execute, @function
access_probe_execute:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	pushfq
	cli
	LOAD_SPACE %rbx
	mov %rsp, ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_RSP(%rbx)
	sidt ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_IDTR(%rbx)
	lea ACCESS_STACK_SIZE(%rbx), %rsp /* the loop's stack: the space starts with it */
	lidt ACCESS_SPACE_STATE + ACCESS_STATE_PROBE_IDTR(%rbx)
	mov ACCESS_SPACE_STATE + ACCESS_STATE_PROBE_CR4(%rbx), %rax
	mov %rax, %cr4 /* PGE off: no global translation of the kernel's survives into the probe space */
	mov ACCESS_SPACE_STATE + ACCESS_STATE_PROBE_CR3(%rbx), %rax
	mov %rax, %cr3
	movq $0, ACCESS_SPACE_STATE + ACCESS_STATE_INDEX(%rbx)

next_case:
	LOAD_SPACE %rbx
	mov ACCESS_SPACE_STATE + ACCESS_STATE_INDEX(%rbx), %rcx
	cmp ACCESS_SPACE_STATE + ACCESS_STATE_COUNT(%rbx), %rcx
	jae batch_done
	imul $ACCESS_RESULT_SIZE, %rcx, %rax
	add ACCESS_SPACE_STATE + ACCESS_STATE_RESULTS(%rbx), %rax
	mov %rax, ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT(%rbx)
	shl $6, %rcx /* ACCESS_RUN_SIZE */
	add ACCESS_SPACE_STATE + ACCESS_STATE_RUNS(%rbx), %rcx
	mov %rcx, %r12 /* the run */

	mov ACCESS_RUN_CR0(%r12), %rax
	cmp ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_CR0(%rbx), %rax
	je 1f
	mov %rax, %cr0
	mov %rax, ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_CR0(%rbx)
1:	mov ACCESS_RUN_CR4(%r12), %rax
	cmp ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_CR4(%rbx), %rax
	je 1f
	mov %rax, %cr4
	mov %rax, ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_CR4(%rbx)
1:	mov ACCESS_RUN_EFER(%r12), %rax
	cmp ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_EFER(%rbx), %rax
	je 1f
	mov %rax, ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT_EFER(%rbx)
	mov %rax, %rdx
	shr $32, %rdx
	mov $MSR_EFER, %ecx
	wrmsr
1:
	mov %rsp, ACCESS_SPACE_STATE + ACCESS_STATE_LOOP_RSP(%rbx)
	mov ACCESS_RUN_VA(%r12), %rdi
	mov ACCESS_RUN_OP(%r12), %rsi
	mov ACCESS_RUN_VALUE(%r12), %rdx
	cmpq $3, ACCESS_RUN_CPL(%r12)
	je ring3_case
	movq $1, ACCESS_SPACE_STATE + ACCESS_STATE_IN_CASE(%rbx)
	pushq ACCESS_RUN_RFLAGS(%r12)
	popfq /* RFLAGS.AC for this access */
	cmp $ACCESS_OP_WRITE, %rsi
	je 2f
	cmp $ACCESS_OP_FETCH, %rsi
	je 3f
	.globl access_probe_ring0_read
access_probe_ring0_read:
	mov (%rdi), %rax
	jmp 4f
	.globl access_probe_ring0_write
access_probe_ring0_write:
2:	mov %rdx, (%rdi)
	xor %eax, %eax
	jmp 4f
3:	call *%rdi /* the code page holds RET */
	xor %eax, %eax
4:	pushq $RFLAGS_RESERVED
	popfq
	mov ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT(%rbx), %rcx
	movq $ACCESS_NO_VECTOR, ACCESS_RESULT_VECTOR(%rcx)
	mov %rax, ACCESS_RESULT_VALUE(%rcx)
	jmp access_probe_resume

ring3_case:
	pushq $(GDT_USER_DATA | 3)
	pushq ACCESS_SPACE_STATE + ACCESS_STATE_USER_RSP(%rbx)
	pushq $RFLAGS_RESERVED
	pushq $(GDT_USER_CODE | 3)
	pushq ACCESS_SPACE_STATE + ACCESS_STATE_USER_RIP(%rbx)
	movq $1, ACCESS_SPACE_STATE + ACCESS_STATE_IN_CASE(%rbx)
	iretq /* rdi: va, rsi: op, rdx: value; the way back is an exception */

/* The next case, on the loop's stack, whatever stack and RFLAGS the exception left. */
access_probe_resume:
	LOAD_SPACE %rbx
	mov ACCESS_SPACE_STATE + ACCESS_STATE_LOOP_RSP(%rbx), %rsp
	pushq $RFLAGS_RESERVED
	popfq
	movq $0, ACCESS_SPACE_STATE + ACCESS_STATE_IN_CASE(%rbx)
	incq ACCESS_SPACE_STATE + ACCESS_STATE_INDEX(%rbx)
	jmp next_case

/* Back to the kernel's registers, tables, IDT and stack; rbx: the space. */
.macro RESTORE_KERNEL
	mov ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_CR0(%rbx), %rax
	mov %rax, %cr0
	mov ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_EFER(%rbx), %rax
	mov %rax, %rdx
	shr $32, %rdx
	mov $MSR_EFER, %ecx
	wrmsr
	mov ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_CR3(%rbx), %rax
	mov %rax, %cr3
	mov ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_CR4(%rbx), %rax
	mov %rax, %cr4
	lidt ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_IDTR(%rbx)
	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov ACCESS_SPACE_STATE + ACCESS_STATE_KERNEL_RSP(%rbx), %rsp
.endm

batch_done:
	RESTORE_KERNEL
	popfq
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret
	.size access_probe_execute, . - access_probe_execute

/* Entry stubs: each pushes a zero where the CPU pushed no error code, then its vector. */
.macro PROBE_TRAP vector, has_error_code
	.balign 16
probe_trap_\vector:
	.if \has_error_code == 0
	push $0
	.endif
	push $\vector
	jmp probe_trap_common
.endm

.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	PROBE_TRAP \v, 0
.endr
.irp v, 8,10,11,12,13,14,17,21,29,30
	PROBE_TRAP \v, 1
.endr

/* Stack: vector, error code, then the CPU's frame (rip, cs, rflags, rsp, ss). */
probe_trap_common:
	push %rax
	LOAD_SPACE %rax
	cmpq $0, ACCESS_SPACE_STATE + ACCESS_STATE_IN_CASE(%rax)
	je probe_trap_outside_case
	mov ACCESS_SPACE_STATE + ACCESS_STATE_CURRENT(%rax), %rax
	popq ACCESS_RESULT_VALUE(%rax) /* the interrupted rax: what a ring-3 read loaded */
	popq ACCESS_RESULT_VECTOR(%rax)
	popq ACCESS_RESULT_ERROR(%rax)
	popq ACCESS_RESULT_RIP(%rax)
	popq ACCESS_RESULT_CS(%rax)
	mov %cr2, %rcx
	mov %rcx, ACCESS_RESULT_CR2(%rax)
	jmp access_probe_resume

/* The loop itself faulted (a control register it was given, a broken probe space): back to the
 * kernel, and stop there with what the CPU reported. */
probe_trap_outside_case:
	pop %rax
	pop %r12 /* vector */
	pop %r13 /* error code */
	pop %r14 /* rip */
	mov %cr2, %r15
	LOAD_SPACE %rbx
	RESTORE_KERNEL
	and $-16, %rsp
	mov %r12, %rdi
	mov %r13, %rsi
	mov %r14, %rdx
	mov %r15, %rcx
	call access_probe_broken /* does not return */
	ud2

	.balign 4096, 0xCC
	.globl access_probe_text_end
access_probe_text_end:

/* The ring-3 page. rdi: the VA, rsi: ACCESS_OP_*, rdx: the value a write stores. */
	.section .text.access_probe_user, "ax"
	.balign 4096
	.globl access_probe_user_page
access_probe_user_page:
	cmp $ACCESS_OP_WRITE, %rsi
	je 2f
	cmp $ACCESS_OP_FETCH, %rsi
	je 3f
	.globl access_probe_user_read
access_probe_user_read:
	mov (%rdi), %rax
	jmp access_probe_user_done
	.globl access_probe_user_write
access_probe_user_write:
2:	mov %rdx, (%rdi)
	xor %eax, %eax
	jmp access_probe_user_done
3:	call *%rdi
	xor %eax, %eax
	.globl access_probe_user_done
access_probe_user_done:
	ud2
	.balign 4096, 0xCC

	.section .rodata
	.balign 8
	.globl access_probe_trap_entries
access_probe_trap_entries:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad probe_trap_\v
.endr
