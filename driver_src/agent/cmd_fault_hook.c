/*
 * TEST HOOKS, not DDIs: each makes the guest commit one fault of the harness's fault matrix
 * (docs/faults.md) for real, so that the harness's handling of it is tested against a guest that
 * really hangs, really triple-faults, really sends bytes that are not frames. Nothing else may call
 * them.
 *
 *   test_hook_hang                          cli; hlt for ever: the request is never answered
 *   test_hook_triple_fault                  an empty IDT, then #UD: #GP, #DF, shutdown (a reset)
 *   test_hook_console_garbage <count> <seed> pseudo-random bytes on COM1, then the answer
 *   test_hook_agent_garbage <count> <seed>   pseudo-random bytes and a newline on COM2, then the answer
 *
 * The bytes are xorshift64 (13, 7, 17) from the seed, one byte (bits 32..39) per step, so the host
 * can compute what the logs must hold.
 */
#include "console.h"
#include "protocol.h"
#include "uart.h"
#include "x86.h"

#define GARBAGE_MAX 65536

static void hang(const struct request *r)
{
	(void)r;
	kprintf("mmhil: test hook: hanging with interrupts off (cli; hlt)\n");
	halt_forever();
}

static void triple_fault(const struct request *r)
{
	(void)r;
	kprintf("mmhil: test hook: triple fault (empty IDT, then ud2)\n");
	const struct PACKED {
		uint16_t limit;
		uint64_t base;
	} empty_idt = {0, 0};
	/* Every vector now lies beyond the IDT's limit: #UD raises #GP, #GP raises #DF, #DF shuts down. */
	asm volatile("lidt %0\n\tud2" ::"m"(empty_idt));
	__builtin_unreachable();
}

static uint8_t garbage_byte(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return (uint8_t)(x >> 32);
}

/* The count and seed of a garbage hook, checked; false (answered) when unusable. */
static bool garbage_arguments(const struct request *r, uint64_t *count, uint64_t *seed)
{
	*count = r->values[0].integer;
	*seed = r->values[1].integer;
	if (!argument_at_most(r, "count", *count, GARBAGE_MAX))
		return false;
	if (*seed == 0) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "seed must not be 0 (xorshift stays at 0)");
		return false;
	}
	return true;
}

static void answer_written(const struct request *r, uint64_t count)
{
	frame_open_response(r->id);
	frame_decimal("written", count);
	frame_close();
}

static void console_garbage(const struct request *r)
{
	uint64_t count, state;
	if (!garbage_arguments(r, &count, &state))
		return;
	kprintf("mmhil: test hook: %lu pseudo-random bytes on the console follow\n", count);
	for (uint64_t i = 0; i < count; i++)
		uart_put(COM1_PORT, garbage_byte(&state));
	kprintf("\nmmhil: test hook: console garbage ends\n");
	answer_written(r, count);
}

static void agent_garbage(const struct request *r)
{
	uint64_t count, state;
	if (!garbage_arguments(r, &count, &state))
		return;
	kprintf("mmhil: test hook: %lu pseudo-random bytes and a newline on the agent channel (COM2)\n", count);
	for (uint64_t i = 0; i < count; i++)
		uart_put(COM2_PORT, garbage_byte(&state));
	uart_put(COM2_PORT, '\n');
	answer_written(r, count);
}

AGENT_COMMAND("test_hook_hang", "", "no values", hang);
AGENT_COMMAND("test_hook_triple_fault", "", "no values", triple_fault);
AGENT_COMMAND("test_hook_console_garbage", "ii", "<count:integer> <seed:integer>", console_garbage);
AGENT_COMMAND("test_hook_agent_garbage", "ii", "<count:integer> <seed:integer>", agent_garbage);
