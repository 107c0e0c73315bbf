/* The stop record and the one path that emits it (agent frame, console STOP screen, QEMU exit). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "compiler.h"

struct bugcheck {
	uint32_t code;
	uint64_t parameters[4];
	uint64_t rip, cr3;
	unsigned cpu;        /* the CPU that stopped */
	bool from_exception; /* vector, error and cr2 are meaningful */
	uint64_t vector, error, cr2;
};

NORETURN void bugcheck_stop(const struct bugcheck *record);
