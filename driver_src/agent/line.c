/* Reading request lines from COM2 into one bounded buffer. */
#include "protocol.h"
#include "uart.h"
#include "x86.h"

/* A request's text, its newline excluded. */
static char line_buffer[REQUEST_MAX - 1];

enum line_status line_read(const char **line, size_t *length)
{
	size_t used = 0;
	bool oversized = false;
	for (;;) {
		uint8_t byte;
		if (!uart_poll(COM2_PORT, &byte))
			continue;
		if (byte == '\n')
			break;
		if (used < sizeof(line_buffer))
			line_buffer[used++] = (char)byte;
		else
			oversized = true; /* keep discarding up to the newline */
	}
	if (oversized)
		return LINE_OVERSIZED;
	if (used && line_buffer[used - 1] == '\r')
		used--;
	*line = line_buffer;
	*length = used;
	return LINE_COMPLETE;
}
