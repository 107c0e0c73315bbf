#include "boot_phases.h"
#include "x86.h"

uint64_t boot_entry_tsc __attribute__((section(".data")));
static uint64_t stamps[BOOT_PHASE_COUNT];
static uint64_t console_ticks_in_boot;

static const char *const names[BOOT_PHASE_COUNT] = {
	[BOOT_ENTRY] = "entry",
	[BOOT_LONG_MODE] = "long_mode",
	[BOOT_CPU] = "cpu",
	[BOOT_FRAMES] = "frames",
	[BOOT_ADDRESS_SPACE] = "address_space",
	[BOOT_PFN_DATABASE] = "pfn_database",
	[BOOT_MEMORY_MANAGER] = "memory_manager",
	[BOOT_APS] = "aps",
	[BOOT_HELLO] = "hello",
};

void boot_phase_done(enum boot_phase phase)
{
	stamps[phase] = rdtsc();
	if (phase == BOOT_HELLO)
		console_ticks_in_boot = console_ticks();
}

const char *boot_phase_name(enum boot_phase phase)
{
	return names[phase];
}

uint64_t boot_phase_tsc(enum boot_phase phase)
{
	return phase == BOOT_ENTRY ? boot_entry_tsc : stamps[phase];
}

uint64_t boot_console_ticks(void)
{
	return console_ticks_in_boot;
}
