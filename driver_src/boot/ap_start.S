/*
 * Application processor start-up. The BSP copies the trampoline below to AP_TRAMPOLINE_PA and
 * sends INIT-SIPI-SIPI; the AP starts it in real mode at CS:IP = (AP_TRAMPOLINE_PA >> 4):0. It
 * enters protected mode, then long mode on the boot stub's tables (they identity-map the first GiB,
 * the trampoline included, and map the kernel image at its link address), with the CR4 (PAE, LA57)
 * and EFER (LME, NXE) bits and the CR0 the BSP patched in, and jumps to ap_entry in the higher half, which loads
 * the kernel's own tables and the AP's stack and calls ap_main().
 */
#include "layout.h"
#include "x86.h"

#define TRAMPOLINE(sym) (AP_TRAMPOLINE_PA + (sym) - ap_trampoline_start)
#define TRAMPOLINE_CODE32 0x18
#define CR0_PE 0x1

	/* Data to the kernel: only ever copied, never run where it is. */
	.section .rodata
	.balign 16
	.globl ap_trampoline_start, ap_trampoline_end, ap_trampoline_cr0, ap_trampoline_cr3, ap_trampoline_cr4, ap_trampoline_efer
	.code16
ap_trampoline_start:
	cli
	cld
	lgdtl %cs:(trampoline_gdtr - ap_trampoline_start)
	mov $CR0_PE, %eax /* and caches on: INIT left CD and NW set */
	mov %eax, %cr0
	ljmpl $TRAMPOLINE_CODE32, $TRAMPOLINE(protected_mode)

	.code32
protected_mode:
	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov TRAMPOLINE(ap_trampoline_cr4), %eax /* PAE, and LA57 while paging is still off */
	mov %eax, %cr4
	mov TRAMPOLINE(ap_trampoline_cr3), %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or TRAMPOLINE(ap_trampoline_efer), %eax
	wrmsr
	mov TRAMPOLINE(ap_trampoline_cr0), %eax /* the BSP's CR0: PG and WP on */
	mov %eax, %cr0
	ljmp $GDT_KERNEL_CODE, $TRAMPOLINE(long_mode)

	.code64
long_mode:
	movabs $ap_entry, %rax
	jmp *%rax

	.balign 8
trampoline_gdt: /* the kernel's code and data selectors, and a 32-bit code segment for the way up */
	.quad 0
	.quad 0x00AF9B000000FFFF
	.quad 0x00CF93000000FFFF
	.quad 0x00CF9B000000FFFF
trampoline_gdtr:
	.word trampoline_gdtr - trampoline_gdt - 1
	.long TRAMPOLINE(trampoline_gdt)
ap_trampoline_cr0:
	.long 0
ap_trampoline_cr3: /* the boot stub's root table: below 4 GiB, inside the image */
	.long 0
ap_trampoline_cr4:
	.long 0
ap_trampoline_efer:
	.long 0
ap_trampoline_end:

	.text
/* On the boot stub's tables, in the higher half. ap_boot (kernel/smp.c): kernel CR3, stack top, struct cpu. */
	.globl ap_entry
ap_entry:
	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov ap_boot(%rip), %rax
	mov %rax, %cr3
	mov ap_boot+8(%rip), %rsp
	mov ap_boot+16(%rip), %rdi
	xor %ebp, %ebp
	call ap_main
	ud2
