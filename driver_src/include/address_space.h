/* Building the kernel's own address space (layout.h) and moving onto it. */
#pragma once
#include <stdint.h>
#include "compiler.h"

extern uint64_t physmap_size;        /* bytes mapped at PHYSMAP_BASE */
extern unsigned physmap_leaf_level;  /* 3 (1 GiB leaves) or 2 (2 MiB leaves) */

/*
 * Maps all RAM at PHYSMAP_BASE in the boot stub's tables, builds fresh tables from the frame
 * allocator (image W^X in 4 KiB pages, guarded stack, device registers, shared physmap, self-map),
 * loads them and calls next on the new stack. The boot tables, with their identity map, are never used again.
 */
NORETURN void address_space_switch(void (*next)(void));
