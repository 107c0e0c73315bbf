#include "bugcheck.h"
#include "agent.h"
#include "bugcodes.h"
#include "console.h"
#include "ntddk.h"
#include "smp.h"
#include "uart.h"
#include "x86.h"

/* Only the CPU that claimed the stop (smp_claim_stop) touches these. */
static unsigned stops_entered;
static const struct bugcheck *first_stop;
static bool agent_record_sent;

/*
 * pvpanic first: under `-action panic=pause` QEMU stops the guest with its memory intact, so the
 * host can take a core dump before it resumes the guest and the exit write ends QEMU with status 33.
 * TCG pauses a vCPU only between translation blocks, and a block runs on past an I/O write: the
 * loop's branches end the block, so the pause lands before the exit write.
 */
static NORETURN void exit_crashed(void)
{
	outb(PVPANIC_PORT, PVPANIC_PANICKED);
	for (int i = 0; i < 16; i++)
		asm volatile("pause");
	outl(DEBUG_EXIT_PORT, DEBUG_EXIT_BUGCHECK);
	halt_forever(); /* no isa-debug-exit device: wait for the host to kill the VM */
}

static void put_text(uint16_t port, const char *text)
{
	while (*text)
		uart_put(port, (uint8_t)*text++);
}

static void put_key_hex(uint16_t port, const char *key, uint64_t value)
{
	put_text(port, key);
	put_text(port, "0x");
	int shift = 60;
	while (shift > 0 && !(value >> shift))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		uart_put(port, (uint8_t)"0123456789abcdef"[value >> shift & 0xF]);
}

/*
 * A stop while stopping: with nothing but the UART, tell the console, and give the agent channel
 * the first stop's record if it did not get it (exit status 33 promises one).
 */
static NORETURN void nested_stop(const struct bugcheck *nested)
{
	put_key_hex(COM1_PORT, "\nmmhil: nested bugcheck ", nested->code);
	put_key_hex(COM1_PORT, " while stopping for ", first_stop->code);
	uart_put(COM1_PORT, '\n');
	if (!agent_record_sent) {
		const struct bugcheck *b = first_stop;
		agent_abandon_frame();
		put_key_hex(COM2_PORT, "!bugcheck code=", b->code);
		put_key_hex(COM2_PORT, " p1=", b->parameters[0]);
		put_key_hex(COM2_PORT, " p2=", b->parameters[1]);
		put_key_hex(COM2_PORT, " p3=", b->parameters[2]);
		put_key_hex(COM2_PORT, " p4=", b->parameters[3]);
		put_text(COM2_PORT, " name=\"");
		put_text(COM2_PORT, bugcheck_name(b->code));
		put_key_hex(COM2_PORT, "\" rip=", b->rip);
		put_key_hex(COM2_PORT, " cr3=", b->cr3);
		put_key_hex(COM2_PORT, " cpu=", b->cpu);
		uart_put(COM2_PORT, '\n');
	}
	exit_crashed();
}

/*
 * The first CPU to stop the machine owns the stop: the others are frozen by an NMI before the
 * record is written, so nothing runs on while it is, and a second CPU that bugchecks meanwhile
 * only freezes (the record of the first stop is the one reported).
 */
void bugcheck_stop(const struct bugcheck *b)
{
	asm volatile("cli"); /* a stop is never interrupted, whoever called it */
	if (!smp_claim_stop())
		smp_freeze();
	stops_entered++;
	if (stops_entered == 2)
		nested_stop(b);
	if (stops_entered > 2)
		exit_crashed();

	cpu_set_t frozen = smp_stop_others();
	first_stop = b;
	agent_send_bugcheck(b);
	agent_record_sent = true;
	kprintf("\n*** STOP: 0x%08X (0x%016lX,0x%016lX,0x%016lX,0x%016lX)\n%s\n", b->code, b->parameters[0],
		b->parameters[1], b->parameters[2], b->parameters[3], bugcheck_name(b->code));
	kprintf("rip 0x%016lx cr3 0x%016lx cpu %u", b->rip, b->cr3, b->cpu);
	if (b->from_exception)
		kprintf(" vector %lu error 0x%lx cr2 0x%016lx", b->vector, b->error, b->cr2);
	kprintf("\n");
	if (cpu_count > 1)
		kprintf("mmhil: CPU %u stopped the others first: %u of %u froze (NMI)\n", b->cpu,
			cpus_in_set(frozen), cpu_count - 1);
	kprintf("mmhil: stopped\n");
	exit_crashed();
}

void KeBugCheckEx(ULONG code, ULONG_PTR p1, ULONG_PTR p2, ULONG_PTR p3, ULONG_PTR p4)
{
	struct bugcheck record = {
		.code = code,
		.parameters = {p1, p2, p3, p4},
		.rip = (uint64_t)__builtin_return_address(0),
		.cr3 = read_cr3(),
		.cpu = this_cpu()->index,
	};
	bugcheck_stop(&record);
}

const char *bugcheck_name(uint32_t code)
{
	switch (code) {
	case IRQL_NOT_GREATER_OR_EQUAL: return "IRQL_NOT_GREATER_OR_EQUAL";
	case IRQL_NOT_LESS_OR_EQUAL: return "IRQL_NOT_LESS_OR_EQUAL";
	case SPIN_LOCK_ALREADY_OWNED: return "SPIN_LOCK_ALREADY_OWNED";
	case MEMORY_MANAGEMENT: return "MEMORY_MANAGEMENT";
	case KMODE_EXCEPTION_NOT_HANDLED: return "KMODE_EXCEPTION_NOT_HANDLED";
	case PHASE0_INITIALIZATION_FAILED: return "PHASE0_INITIALIZATION_FAILED";
	case NO_MORE_SYSTEM_PTES: return "NO_MORE_SYSTEM_PTES";
	case TARGET_MDL_TOO_SMALL: return "TARGET_MDL_TOO_SMALL";
	case PFN_LIST_CORRUPT: return "PFN_LIST_CORRUPT";
	case PAGE_FAULT_IN_NONPAGED_AREA: return "PAGE_FAULT_IN_NONPAGED_AREA";
	case UNSUPPORTED_PROCESSOR: return "UNSUPPORTED_PROCESSOR";
	case INSTALL_MORE_MEMORY: return "INSTALL_MORE_MEMORY";
	case UNEXPECTED_KERNEL_MODE_TRAP: return "UNEXPECTED_KERNEL_MODE_TRAP";
	case NMI_HARDWARE_FAILURE: return "NMI_HARDWARE_FAILURE";
	case PROCESS_HAS_LOCKED_PAGES: return "PROCESS_HAS_LOCKED_PAGES";
	case MACHINE_CHECK_EXCEPTION: return "MACHINE_CHECK_EXCEPTION";
	case ATTEMPTED_WRITE_TO_READONLY_MEMORY: return "ATTEMPTED_WRITE_TO_READONLY_MEMORY";
	case BAD_POOL_CALLER: return "BAD_POOL_CALLER";
	case DRIVER_VERIFIER_DETECTED_VIOLATION: return "DRIVER_VERIFIER_DETECTED_VIOLATION";
	case DRIVER_IRQL_NOT_LESS_OR_EQUAL: return "DRIVER_IRQL_NOT_LESS_OR_EQUAL";
	case SYSTEM_PTE_MISUSE: return "SYSTEM_PTE_MISUSE";
	case ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY: return "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY";
	case INVALID_MDL_RANGE: return "INVALID_MDL_RANGE";
	case IPI_WATCHDOG_TIMEOUT: return "IPI_WATCHDOG_TIMEOUT";
	default: return "UNKNOWN_BUGCHECK";
	}
}
