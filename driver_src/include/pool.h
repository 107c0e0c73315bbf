/* Nonpaged pool set-up; the DDIs themselves are declared in ntddk.h. */
#pragma once
#include <stdint.h>

extern uint64_t nonpaged_pool_base; /* NONPAGED_POOL_SIZE bytes of VA from here */

void pool_init(void);
