/* Force-included into every C file by the Makefile, ahead of everything else. */
#pragma once

/*
 * One static image: no symbol can be preempted, so -fpie code reaches every symbol
 * RIP-relative and the link needs no GOT and leaves no dynamic relocation.
 */
#pragma GCC visibility push(hidden)

#define NORETURN __attribute__((noreturn))
#define MUST_USE __attribute__((warn_unused_result))
#define PACKED __attribute__((packed))
#define ALIGNED(n) __attribute__((aligned(n)))
#define NOINLINE __attribute__((noinline))
#define PRINTF_LIKE(fmt, args) __attribute__((format(printf, fmt, args)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
