/*
 * PVH entry: QEMU's firmware jumps to pvh_start in 32-bit protected mode with paging off and
 * EBX = physical address of struct hvm_start_info. The stub runs at its load address, so every
 * absolute reference goes through PHYS(). It builds temporary tables (1 GiB identity map for
 * itself, the same 1 GiB at the kernel's link base, the self-map), enables PAE (+LA57 when
 * chosen), EFER.LME (+NXE) and paging, and enters kernel_boot() in the higher half.
 */
#include "layout.h"
#include "paging.h"
#include "pvh_start_info.h"
#include "x86.h"

#define PHYS(sym) ((sym) - KERNEL_VIRT_OFFSET)
#define BOOT_TABLE (PTE_P | PTE_RW)

	.section .note.Xen, "a", @note
	.balign 4
	.long 4, 4, XEN_ELFNOTE_PHYS32_ENTRY /* namesz, descsz, type */
	.asciz "Xen"
	.long PHYS(pvh_start)

	.section .text.boot, "ax", @progbits
	.code32
	.globl pvh_start
pvh_start:
	rdtsc /* boot_phases.h: where boot time goes, from here on */
	mov %eax, PHYS(boot_entry_tsc)
	mov %edx, PHYS(boot_entry_tsc) + 4
	cli
	cld
	mov %ebx, %ebp /* hvm_start_info */

	/*
	 * .bss holds the boot tables and the boot stack, and must start zero. No loader writes it
	 * (kernel.ld), and fresh guest RAM is zero, so only a boot after an earlier one on the same RAM
	 * (a system_reset) finds it dirty, and the earlier boot left bss_in_use set. Clearing it
	 * always would touch every page: ~0.5 s for 1 MiB under nested KVM, ~1 ms under TCG.
	 */
	cmpl $0, PHYS(bss_in_use)
	je 3f
	mov $PHYS(__bss_start), %edi
	mov $PHYS(__bss_end), %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl
3:	movl $1, PHYS(bss_in_use)
	mov $PHYS(boot_stack_top), %esp

	call require_long_mode
	call choose_paging_levels /* %esi = 4 or 5 */
	call build_boot_tables    /* %eax = root table */
	mov %eax, %cr3

	/* Only bits this CPU has: a CR4 bit the model lacks hangs TCG. */
	mov $CR4_PAE, %eax
	cmp $5, %esi
	jne 1f
	or $CR4_LA57, %eax /* only while paging is off */
1:	mov %eax, %cr4

	mov $0x80000001, %eax
	cpuid
	mov $MSR_EFER, %ecx
	mov %edx, %edi
	rdmsr
	or $EFER_LME, %eax
	bt $CPUID_EXT_EDX_NX, %edi
	jnc 2f
	or $EFER_NXE, %eax
2:	wrmsr

	mov %cr0, %eax
	or $(CR0_PG | CR0_WP), %eax
	mov %eax, %cr0
	lgdt PHYS(boot_gdt_descriptor)
	ljmp $GDT_KERNEL_CODE, $PHYS(long_mode_entry)

require_long_mode:
	mov $0x80000000, %eax
	cpuid
	cmp $0x80000001, %eax
	jb unsupported_processor
	mov $0x80000001, %eax
	cpuid
	bt $CPUID_EXT_EDX_LM, %edx
	jnc unsupported_processor
	ret

/* %esi = 5 when LA57 exists and the command line does not say paging=4, else 4. */
choose_paging_levels:
	mov $4, %esi
	call cmdline_says_paging_4
	test %eax, %eax
	jnz 1f
	xor %eax, %eax
	cpuid
	cmp $7, %eax
	jb 1f
	mov $7, %eax
	xor %ecx, %ecx
	cpuid
	bt $CPUID_7_ECX_LA57, %ecx
	jnc 1f
	mov $5, %esi
1:	ret

/*
 * %eax = 1 when the first "paging=" token of the command line is exactly "paging=4". The C
 * kernel parses the same token fully (and reports a fallback); here only 4 differs from auto.
 */
cmdline_says_paging_4:
	xor %eax, %eax
	cmpl $HVM_START_MAGIC, (%ebp)
	jne 9f
	cmpl $0, HVM_START_INFO_CMDLINE+4(%ebp)
	jne 9f
	mov HVM_START_INFO_CMDLINE(%ebp), %edx
	test %edx, %edx
	jz 9f
	mov $' ', %cl /* the byte before %edx: tokens start after a space */
1:	cmp $' ', %cl
	jne 3f
	mov $PHYS(paging_key), %edi
	mov %edx, %ebx
2:	mov (%edi), %ch
	test %ch, %ch
	jz 4f
	cmp (%ebx), %ch
	jne 3f
	inc %edi
	inc %ebx
	jmp 2b
4:	cmpb $'4', (%ebx)
	jne 9f
	mov 1(%ebx), %cl
	test %cl, %cl
	jz 5f
	cmp $' ', %cl
	jne 9f
5:	mov $1, %eax
	ret
3:	mov (%edx), %cl
	test %cl, %cl
	jz 9f
	inc %edx
	jmp 1b
9:	ret

/* Tables in .bss (already zero). In: %esi levels. Out: %eax root. */
build_boot_tables:
	mov $PHYS(boot_pd), %edi
	mov $(PTE_P | PTE_RW | PTE_PS), %eax
	mov $PT_ENTRIES, %ecx
1:	mov %eax, (%edi)
	add $0x200000, %eax
	add $8, %edi
	loop 1b
	movl $(PHYS(boot_pd) + BOOT_TABLE), PHYS(boot_pdpt)
	mov $(PHYS(boot_pdpt) + BOOT_TABLE), %eax
	mov %eax, PHYS(boot_pml4)
	mov %eax, PHYS(boot_pml4) + 8 * KERNEL_PML4_SLOT
	mov $(PHYS(boot_pml4) + BOOT_TABLE), %eax
	cmp $5, %esi
	je 2f
	mov %eax, PHYS(boot_pml4) + 8 * SELFMAP_SLOT
	mov $PHYS(boot_pml4), %eax
	ret
2:	mov %eax, PHYS(boot_pml5)
	mov %eax, PHYS(boot_pml5) + 8 * KERNEL_PML5_SLOT
	movl $(PHYS(boot_pml5) + BOOT_TABLE), PHYS(boot_pml5) + 8 * SELFMAP_SLOT
	mov $PHYS(boot_pml5), %eax
	ret

/* No long mode: a fixed UNSUPPORTED_PROCESSOR (0x5D) record on both channels, then exit. */
unsupported_processor:
	mov $PHYS(no_long_mode_console), %esi
	mov $COM1_PORT, %dx
	call put_string
	mov $PHYS(no_long_mode_agent), %esi
	mov $COM2_PORT, %dx
	call put_string
	mov $DEBUG_EXIT_PORT, %dx
	mov $DEBUG_EXIT_BUGCHECK, %eax
	out %eax, %dx
1:	hlt
	jmp 1b

/* %esi string, %dx UART data port. */
put_string:
	lodsb
	test %al, %al
	jz 2f
	mov %al, %ah
	add $5, %dx /* line status: wait for an empty transmitter */
1:	in %dx, %al
	test $0x20, %al
	jz 1b
	sub $5, %dx
	mov %ah, %al
	out %al, %dx
	jmp put_string
2:	ret

	.code64
long_mode_entry: /* still at the physical address, through the identity map */
	movabs $higher_half_entry, %rax
	jmp *%rax
higher_half_entry:
	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	lea boot_stack_top(%rip), %rsp
	mov %ebp, %edi /* kernel_boot(start_info_pa, paging_levels) */
	call kernel_boot
	ud2

	.section .rodata
paging_key:
	.asciz "paging="
no_long_mode_console:
	.ascii "*** STOP: 0x0000005D (0x0000000000000000,0x0000000000000000,"
	.ascii "0x0000000000000000,0x0000000000000000)\nUNSUPPORTED_PROCESSOR\n"
	.asciz "mmhil: this CPU has no long mode (CPUID 0x80000001 EDX bit 29)\n"
no_long_mode_agent:
	.asciz "!bugcheck code=0x5d p1=0x0 p2=0x0 p3=0x0 p4=0x0 name=\"UNSUPPORTED_PROCESSOR\" rip=0x0 cr3=0x0 cpu=0\n"

	.data
	.balign 8
boot_gdt: /* null, 64-bit code, data; accessed bits preset so loads never write the table */
	.quad 0
	.quad 0x00AF9B000000FFFF
	.quad 0x00CF93000000FFFF
boot_gdt_descriptor:
	.word boot_gdt_descriptor - boot_gdt - 1
	.long PHYS(boot_gdt)

	.bss
	.balign PAGE_SIZE
	.globl boot_pml5, boot_pml4 /* the APs enter long mode on these tables (kernel/smp.c) */
boot_pml5:
	.skip PAGE_SIZE
boot_pml4:
	.skip PAGE_SIZE
boot_pdpt:
	.skip PAGE_SIZE
boot_pd:
	.skip PAGE_SIZE
boot_stack:
	.skip 0x4000
boot_stack_top:
bss_in_use: /* set by every boot: the next one on this RAM clears the bss */
	.skip 4
