/* Reading request lines from COM2 into one bounded buffer. */
#include "protocol.h"
#include "uart.h"
#include "x86.h"

/*
 * How long COM2 is polled before the CPU halts, in TSC ticks (~0.4 ms at 2.6 GHz; the TSC runs at
 * the host's rate under TCG and KVM alike). Polling is what keeps requests fast: QEMU's 16550 hands
 * over at most 14 bytes per main-loop turn, a turn took up to ~300 us here, and waking a halted vCPU
 * costs ~100 us more. A host sending request after request never sees the halt.
 */
#define SPIN_TICKS BIT(20)

/* A request's text, its newline excluded, and how far it got: a doorbell may cut a line. */
static char line_buffer[REQUEST_MAX - 1];
static size_t used;
static bool oversized;

enum line_status line_read(const char **line, size_t *length)
{
	for (;;) {
		uint8_t byte;
		if (!uart_poll(COM2_PORT, &byte)) {
			uart_wait_receive(COM2_PORT, SPIN_TICKS);
			continue;
		}
		/* The doorbell byte is a line byte like any other unless a request waits in the mailbox. */
		if (byte == DOORBELL_REQUEST && mailbox_request_pending())
			return LINE_MAILBOX;
		if (byte == '\n')
			break;
		if (used < sizeof(line_buffer))
			line_buffer[used++] = (char)byte;
		else
			oversized = true; /* keep discarding up to the newline */
	}
	size_t complete = used;
	bool was_oversized = oversized;
	used = 0;
	oversized = false;
	if (was_oversized)
		return LINE_OVERSIZED;
	if (complete && line_buffer[complete - 1] == '\r')
		complete--;
	*line = line_buffer;
	*length = complete;
	return LINE_COMPLETE;
}
