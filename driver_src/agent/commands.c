/* The commands of docs/agent-protocol.md. Values arrive checked for count and type. */
#include "address_space.h"
#include "agent.h"
#include "boot_phases.h"
#include "bootinfo.h"
#include "build_info.h"
#include "cpu.h"
#include "frames.h"
#include "irql.h"
#include "kstring.h"
#include "nofault.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"
#include "pool.h"
#include "protocol.h"
#include "raw_access.h"
#include "smp.h"
#include "x86.h"

#define RAW_ACCESS_MAX 4096
#define ULONG_MAX_VALUE 0xFFFFFFFFull

static uint8_t raw_buffer[RAW_ACCESS_MAX];

void hello_keys(void)
{
	frame_decimal("proto", PROTOCOL_VERSION);
	frame_string("build", mmhil_build_id);
	frame_decimal("paging", paging_levels);
	frame_decimal("cpus", cpu_count);
	frame_string("cmdline", boot_info.cmdline);
	frame_hex("mailbox", mailbox_physical_address());
	frame_string_open("mem");
	for (unsigned i = 0; i < boot_info.memmap_count; i++) {
		const struct memmap_entry *e = &boot_info.memmap[i];
		frame_string_text(i ? "," : "");
		frame_string_hex(e->base);
		frame_string_text(":");
		frame_string_hex(e->size);
		frame_string_text(":");
		frame_string_hex(e->type);
	}
	frame_string_close();
}

static void hello(const struct request *r)
{
	frame_open_response(r->id);
	hello_keys();
	frame_close();
}

static void quiet_ticks(const struct request *r)
{
	frame_open_response(r->id);
	frame_decimal("quiet_ticks", agent_quiet_ticks());
	frame_close();
}

/* The floor of every round trip: parse, look up, and an answer with no values. */
static void ping(const struct request *r)
{
	frame_open_response(r->id);
	frame_close();
}

/* TSC stamps of the boot phases (boot_phases.h), the console's share of them, and the TSC now. */
static void boot_phases(const struct request *r)
{
	frame_open_response(r->id);
	frame_string_open("phases");
	for (unsigned phase = 0; phase < BOOT_PHASE_COUNT; phase++) {
		frame_string_text(phase ? "," : "");
		frame_string_text(boot_phase_name(phase));
		frame_string_text(":");
		frame_string_decimal(boot_phase_tsc(phase));
	}
	frame_string_close();
	frame_decimal("console_ticks", boot_console_ticks());
	frame_decimal("tsc", rdtsc());
	frame_close();
}

static void boot_report(const struct request *r)
{
	uint64_t before = console_bytes();
	boot_report_print();
	frame_open_response(r->id);
	frame_decimal("console_bytes", console_bytes() - before);
	frame_close();
}

static void kernel_info(const struct request *r)
{
	frame_open_response(r->id);
	frame_decimal("levels", paging_levels);
	frame_hex("cr0", read_cr0());
	frame_hex("cr3", read_cr3());
	frame_hex("cr4", read_cr4());
	frame_hex("efer", rdmsr(MSR_EFER));
	frame_hex("pat", cpu.pat ? rdmsr(MSR_PAT) : 0);
	frame_hex("text_start", (uint64_t)__text_start);
	frame_hex("text_end", (uint64_t)__text_end);
	frame_hex("rodata_start", (uint64_t)__rodata_start);
	frame_hex("rodata_end", (uint64_t)__rodata_end);
	frame_hex("data_start", (uint64_t)__data_start);
	frame_hex("data_end", (uint64_t)__data_end);
	frame_hex("stack_base", this_cpu()->stack_base);
	frame_hex("stack_top", this_cpu()->stack_top);
	frame_hex("stack_pointer", read_rsp());
	frame_hex("physmap_base", PHYSMAP_BASE);
	frame_hex("physmap_size", physmap_size);
	frame_hex("physmap_leaf", LEVEL_SIZE(physmap_leaf_level));
	frame_hex("pool_base", nonpaged_pool_base);
	frame_hex("pool_end", nonpaged_pool_base + NONPAGED_POOL_SIZE);
	frame_hex("pfn_db_base", PFN_DATABASE_BASE);
	frame_hex("pte_base", SELFMAP_PTE_BASE(paging_levels));
	frame_close();
}

static void frame_statistics(const struct request *r)
{
	struct frame_stats s = frame_stats();
	frame_open_response(r->id);
	frame_decimal("total", s.total);
	frame_decimal("free", s.free);
	frame_hex("highest_pfn", s.highest_pfn);
	frame_decimal("above_4g_total", s.above_4g_total);
	frame_decimal("above_4g_in_use", s.above_4g_in_use);
	frame_close();
}

static void get_physical_address(const struct request *r)
{
	PHYSICAL_ADDRESS pa = MmGetPhysicalAddress((PVOID)r->values[0].integer);
	frame_open_response(r->id);
	frame_hex("pa", (uint64_t)pa.QuadPart);
	frame_close();
}

static void is_address_valid(const struct request *r)
{
	BOOLEAN valid = MmIsAddressValid((PVOID)r->values[0].integer);
	frame_open_response(r->id);
	frame_boolean("valid", valid);
	frame_close();
}

/* 1..RAW_ACCESS_MAX bytes that do not wrap past the top of the address space. */
static bool raw_range_ok(const struct request *r, uint64_t va, uint64_t length)
{
	if (length < 1 || length > RAW_ACCESS_MAX) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "length must be 1 to %u bytes", RAW_ACCESS_MAX);
		return false;
	}
	if (va + (length - 1) < va) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "the range wraps past the top of the address space");
		return false;
	}
	return true;
}

static void read_va(const struct request *r)
{
	uint64_t va = r->values[0].integer, length = r->values[1].integer;
	if (!raw_range_ok(r, va, length))
		return;
	raw_read(va, raw_buffer, length);
	frame_open_response(r->id);
	frame_bytes("data", raw_buffer, length);
	frame_close();
}

/* Through the TLB as it stands: a fault ends the read (copy_nofault) instead of the system. */
static void read_va_nofault(const struct request *r)
{
	uint64_t va = r->values[0].integer, length = r->values[1].integer;
	if (!raw_range_ok(r, va, length))
		return;
	size_t left = copy_nofault(raw_buffer, (const void *)va, length);
	frame_open_response(r->id);
	frame_bytes("data", raw_buffer, length - left);
	frame_boolean("faulted", left != 0);
	if (left) {
		const struct absorbed_fault *f = &this_cpu()->last_absorbed_fault;
		frame_decimal("fault_vector", f->vector);
		frame_hex("fault_address", f->address);
		frame_hex("fault_error", f->error);
	}
	frame_close();
}

static void write_va(const struct request *r)
{
	uint64_t va = r->values[0].integer, length = r->values[1].length / 2;
	if (!raw_range_ok(r, va, length))
		return;
	bytes_decode(&r->values[1], raw_buffer);
	raw_write(va, raw_buffer, length);
	frame_open_response(r->id);
	frame_decimal("written", length);
	frame_close();
}

static void get_current_irql(const struct request *r)
{
	frame_open_response(r->id);
	frame_decimal("irql", KeGetCurrentIrql());
	frame_close();
}

static void raise_irql(const struct request *r)
{
	if (!argument_at_most(r, "irql", r->values[0].integer, 0xFF))
		return;
	KIRQL old;
	KeRaiseIrql((KIRQL)r->values[0].integer, &old);
	frame_open_response(r->id);
	frame_decimal("old_irql", old);
	frame_close();
}

static void lower_irql(const struct request *r)
{
	if (!argument_at_most(r, "irql", r->values[0].integer, 0xFF))
		return;
	KeLowerIrql((KIRQL)r->values[0].integer);
	frame_open_response(r->id);
	frame_close();
}

/* The IRQL of this CPU, then of every other one as it last set it (they wait between requests). */
static void outstanding(const struct request *r)
{
	frame_open_response(r->id);
	frame_decimal("irql", KeGetCurrentIrql());
	for (unsigned k = 0; k < cpu_count; k++) {
		if (k == this_cpu()->index)
			continue;
		_Static_assert(MAX_CPUS <= 10, "one digit per CPU index");
		char key[] = "irql_cpu0";
		key[sizeof(key) - 2] = (char)('0' + k);
		frame_decimal(key, cpus[k].irql);
	}
	outstanding_report();
	frame_close();
}

AGENT_COMMAND("ping", "", "no values", ping);
AGENT_COMMAND("hello", "", "no values", hello);
AGENT_COMMAND("quiet_ticks", "", "no values", quiet_ticks);
AGENT_COMMAND("boot_phases", "", "no values", boot_phases);
AGENT_COMMAND("boot_report", "", "no values", boot_report);
AGENT_COMMAND("kernel_info", "", "no values", kernel_info);
AGENT_COMMAND("frame_stats", "", "no values", frame_statistics);
AGENT_COMMAND("outstanding", "", "no values", outstanding);
AGENT_COMMAND("MmGetPhysicalAddress", "i", "<va:integer>", get_physical_address);
AGENT_COMMAND("MmIsAddressValid", "i", "<va:integer>", is_address_valid);
AGENT_COMMAND("read_va", "ii", "<va:integer> <length:integer>", read_va);
AGENT_COMMAND("read_va_nofault", "ii", "<va:integer> <length:integer>", read_va_nofault);
AGENT_COMMAND("write_va", "ib", "<va:integer> <data:bytes>", write_va);
AGENT_COMMAND("KeGetCurrentIrql", "", "no values", get_current_irql);
AGENT_COMMAND("KeRaiseIrql", "i", "<new_irql:integer>", raise_irql);
AGENT_COMMAND("KeLowerIrql", "i", "<new_irql:integer>", lower_irql);

extern const struct command *const __agent_commands_start[], *const __agent_commands_end[];
extern void (*const __outstanding_reporters_start[])(void), (*const __outstanding_reporters_end[])(void);

const struct command *command_find(const char *name, size_t length)
{
	for (const struct command *const *c = __agent_commands_start; c < __agent_commands_end; c++)
		if ((*c)->name_length == length && !memcmp((*c)->name, name, length))
			return *c;
	return 0;
}

void outstanding_report(void)
{
	for (void (*const *report)(void) = __outstanding_reporters_start; report < __outstanding_reporters_end; report++)
		(*report)();
}

bool argument_fits_ulong(const struct request *r, const char *what, uint64_t value)
{
	return argument_at_most(r, what, value, ULONG_MAX_VALUE);
}

bool argument_at_most(const struct request *r, const char *what, uint64_t value, uint64_t max)
{
	if (value <= max)
		return true;
	frame_error(r->id, ERROR_BAD_ARGUMENT, "%s must be at most 0x%lx", what, max);
	return false;
}
