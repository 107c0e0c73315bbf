/*
 * The mmhil firmware's first instructions. The CPU leaves reset in real mode at 0xFFFFFFF0, the
 * ROM's last 16 bytes (firmware.ld); from there it loads the ROM's flat GDT, enters 32-bit
 * protected mode without paging, which is how the PVH ABI enters a kernel, and runs
 * firmware_main() on a stack in low RAM (low_memory.h). The ROM is read-only: nothing here or in
 * firmware.c writes a variable of its own.
 */
#include "low_memory.h"

#define FLAT_CODE 0x08
#define FLAT_DATA 0x10
#define CR0_PE 0x1

	.section .text16, "ax", @progbits
	.code16
real_mode_start:
	lgdtl %cs:gdt_descriptor_in_rom /* an offset from the reset CS's base, the ROM's (firmware.ld) */
	/* The PVH ABI's CR0: PE alone. Reset leaves CD and NW set: caches off until cleared. */
	mov $CR0_PE, %eax
	mov %eax, %cr0
	ljmpl $FLAT_CODE, $protected_mode_start

	.code32
protected_mode_start:
	mov $FLAT_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	mov $FIRMWARE_STACK_TOP, %esp
	call firmware_main /* enters the kernel, or stops the VM */

	/* Beside the code that loads it: only the linker script's symbol refers to it, which would not
	 * keep a section of its own from --gc-sections. */
	.balign 8
gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF /* FLAT_CODE: base 0, 4 GiB, 32-bit, execute/read */
	.quad 0x00CF92000000FFFF /* FLAT_DATA: base 0, 4 GiB, read/write */
gdt_end:
	.globl gdt_descriptor
gdt_descriptor:
	.word gdt_end - gdt - 1
	.long gdt

	.section .reset, "ax", @progbits
	.code16
	.globl reset_vector
reset_vector:
	cli
	cld
	jmp real_mode_start
