/* size_t copy_nofault(void *dst, const void *src, size_t n): include/nofault.h. REP MOVSB keeps
 * RCX exact when it faults, so the fixup returns the bytes left. */
	.text
	.globl copy_nofault
	.type copy_nofault, @function
copy_nofault:
	mov %rdx, %rcx
	cld
1:	rep movsb
2:	mov %rcx, %rax
	ret
	.size copy_nofault, . - copy_nofault

	.pushsection .ex_table, "a"
	.balign 8
	.quad 1b, 2b
	.popsection
