/*
 * Which command runs, and where (protocol.h, dispatch()). A request for another CPU is handed to it
 * through smp_run_on(): that CPU runs the command and composes its one frame; this CPU (the BSP,
 * which alone reads requests) waits with interrupts enabled, then sends the frame.
 */
#include "kstring.h"
#include "protocol.h"
#include "smp.h"
#include "x86.h"

#define COMMAND_ECHO_MAX 64 /* how much of an unknown command name an error repeats */

static bool values_match(const struct command *c, const struct request *r)
{
	size_t wanted = strlen(c->signature);
	if (r->count != wanted)
		return false;
	for (size_t i = 0; i < wanted; i++) {
		enum value_type type = c->signature[i] == 'b' ? VALUE_BYTES : VALUE_INTEGER;
		if (r->values[i].type != type)
			return false;
	}
	return true;
}

struct remote_command {
	const struct command *command;
	const struct request *request;
};

/* Interrupts are enabled while a command runs, as for an NT thread: a TLB shootdown from another
 * CPU is answered at once, whatever DDI this CPU is in. Their handlers touch nothing a command uses. */
static void run_command(const struct command *c, const struct request *r)
{
	uint64_t flags = interrupts_save_enable();
	c->run(r);
	interrupts_restore(flags);
}

static void run_remote(void *argument)
{
	const struct remote_command *rc = argument;
	run_command(rc->command, rc->request);
}

void dispatch(const struct request *r)
{
	const struct command *c = command_find(r->command, r->command_length);
	if (!c) {
		char name[COMMAND_ECHO_MAX + 1] = {0};
		memcpy(name, r->command, r->command_length < COMMAND_ECHO_MAX ? r->command_length : COMMAND_ECHO_MAX);
		frame_error(r->id, ERROR_UNKNOWN_COMMAND, "unknown command %s", name);
		return;
	}
	unsigned here = this_cpu()->index, target = here;
	if (r->cpu_given) {
		if (r->cpu.type != VALUE_INTEGER || r->cpu.integer >= cpu_count) {
			frame_error(r->id, ERROR_BAD_ARGUMENT, "cpu= must name an online CPU, 0 to %u", cpu_count - 1);
			return;
		}
		target = (unsigned)r->cpu.integer;
	}
	if (!values_match(c, r)) {
		frame_error(r->id, ERROR_BAD_ARGUMENT, "%s takes %s", c->name, c->usage);
		return;
	}
	if (target == here) {
		run_command(c, r);
		return;
	}
	struct remote_command rc = {c, r};
	smp_run_on(target, run_remote, &rc);
	frame_send_composed();
}
