/*
 * Boot sequence. kernel_boot() runs on the boot stub's temporary tables and stack; from
 * kernel_run() on, the kernel lives on its own tables (layout.h) and its guarded stack.
 */
#include "address_space.h"
#include "agent.h"
#include "boot_phases.h"
#include "bootinfo.h"
#include "build_info.h"
#include "console.h"
#include "copy.h"
#include "cpu.h"
#include "frames.h"
#include "kstring.h"
#include "layout.h"
#include "local_apic.h"
#include "pagetable.h"
#include "pic.h"
#include "pool.h"
#include "smp.h"
#include "syspte.h"
#include "trap.h"

NORETURN void kernel_boot(uint32_t start_info_pa, uint32_t levels);

/* Only what boot must say: a UART byte costs a VM exit (~17 us under nested KVM); `boot_report`
 * prints the rest on request. */
static void warn_about_paging(void)
{
	const char *value;
	size_t length;
	bool given = cmdline_value("paging", &value, &length);
	bool says_4 = given && length == 1 && value[0] == '4';
	bool says_5 = given && length == 1 && value[0] == '5';
	bool says_auto = given && length == 4 && !memcmp(value, "auto", 4);
	if (given && !says_4 && !says_5 && !says_auto)
		kprintf("mmhil: paging=%.*s is not 4, 5 or auto: using auto\n", (int)length, value);
	if (says_5 && paging_levels == 4)
		kprintf("mmhil: paging=5 requested but the CPU has no LA57: falling back to 4-level paging\n");
}

static NORETURN void kernel_run(void)
{
	boot_phase_done(BOOT_ADDRESS_SPACE);
	pfn_database_init();
	boot_phase_done(BOOT_PFN_DATABASE);
	pool_init();
	syspte_init();
	copy_init();
	boot_phase_done(BOOT_MEMORY_MANAGER);
	local_apic_virtual_wire();
	smp_start_aps();
	boot_phase_done(BOOT_APS);
	agent_say_hello();
	/* The console's one line comes after the hello: its bytes (~7 us each under TCG, ~17 us under
	 * nested KVM) and the printf engine's first run are no part of the host's wait for the agent. */
	kprintf("mmhil: build %s, %u-level paging, %lu MiB of RAM; agent ready\n", mmhil_build_id, paging_levels,
		frame_stats().total >> 8);
	agent_serve();
}

void kernel_boot(uint32_t start_info_pa, uint32_t levels)
{
	boot_phase_done(BOOT_LONG_MODE);
	paging_levels = levels;
	smp_init_bsp();
	console_init();
	pic_init();
	agent_init();
	trap_init();
	cpu_detect();
	bootinfo_capture(start_info_pa);
	warn_about_paging();
	smp_discover(boot_info.rsdp);
	cpu_enable_features();
	boot_phase_done(BOOT_CPU);
	frames_bootstrap();
	syspte_set_aside_tables();
	boot_phase_done(BOOT_FRAMES);
	address_space_switch(kernel_run);
}
